"""Rule activation_diff: the per-category activation-difference baseline (no crosscoder)."""

from mneme.activation_diff import activation_diff
from mneme.logs import setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    table = activation_diff(smk.input.base, smk.input.finetuned, smk.input.tokens, smk.input.docs)
    table.to_parquet(smk.output[0], index=False)
    log.info("\n%s", table.to_string(index=False))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
