"""Rule prepare_model: resolve one model spec into results/models/{model}/."""

from mneme.logs import setup_logging
from mneme.models import prepare_model


def main(smk) -> None:
    setup_logging(smk.log[0])
    prepare_model(smk.wildcards.model, dict(smk.params.spec), smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
