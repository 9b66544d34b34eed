"""Rule index_activations: combine a store's shards into its manifest (with the F1 scalar)."""

from mneme.activation_store import write_manifest
from mneme.logs import setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    manifest = write_manifest(smk.output[0], list(smk.input.shards), dict(smk.params.meta))
    log.info(
        "%d rows x %d, norm scale %.4g", manifest["n_rows"], manifest["d_model"], manifest["norm"]["scale"]
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
