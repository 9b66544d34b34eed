"""Rule collect_contexts: example windows (top, quantile, negative) for the selected latents."""

import json

from mneme.latent_stats import collect_contexts
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    opts = smk.params.options
    with open(smk.input.selected) as fh:
        latents = json.load(fh)
    table = collect_contexts(
        smk.input.crosscoder,
        smk.input.base,
        smk.input.finetuned,
        smk.input.tokens,
        smk.input.topk,
        latents,
        smk.output[0],
        window=opts["window"],
        n_top=opts["n_examples"],
        n_quantile_examples=opts["n_quantile_examples"],
        n_quantiles=opts["n_quantiles"],
        n_negative=opts["n_negative"],
        seed=opts["seed"],
    )
    log.info("%d example windows for %d latents", len(table), len(latents))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
