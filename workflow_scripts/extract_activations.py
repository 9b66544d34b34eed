"""Rule extract_activations: one (model, corpus, layer, shard) of residual activations."""

import zarr

from mneme.extraction import extract_shard
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    setup_logging(smk.log[0])
    set_threads(smk.threads)
    opts = smk.params.options
    tokens_attrs = dict(zarr.open_group(smk.input.tokens, mode="r").attrs)
    extract_shard(
        model_dir=smk.input.model,
        tokens_path=smk.input.tokens,
        out_path=smk.output[0],
        layer=smk.params.layer,
        shard=smk.params.shard,
        n_shards=opts["n_shards"],
        batch_size=opts["batch_size"],
        dtype=opts["dtype"],
        skip_first=opts["skip_first"],
        chunk_rows=opts["chunk_rows"],
        codec=opts["codec"],
        codec_level=opts["codec_level"],
        attrs={
            "model": smk.wildcards.model,
            "corpus": smk.wildcards.corpus,
            "context_len": tokens_attrs["context_len"],
        },
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
