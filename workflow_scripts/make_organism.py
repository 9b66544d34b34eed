"""Rule make_organism: build a fine-tuned model organism from its prepared base model."""

from mneme.logs import set_threads, setup_logging
from mneme.organism import make_organism


def main(smk) -> None:
    setup_logging(smk.log[0])
    set_threads(smk.threads)
    make_organism(
        smk.wildcards.model, dict(smk.params.spec), smk.input.base, smk.output[0], dict(smk.params.gcide)
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
