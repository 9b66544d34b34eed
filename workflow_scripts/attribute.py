"""Rule attribute: amplified / suppressed / unchanged per latent, and the latents to explain."""

import json

import pandas as pd

from mneme.attribution import attribute, attribution_summary, decoder_geometry, select_for_interpretation
from mneme.crosscoder import load_crosscoder
from mneme.logs import setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    opts = smk.params.options
    cc = load_crosscoder(smk.input.crosscoder)
    geometry = decoder_geometry(cc.W_dec.detach().numpy(), cc.b_dec.detach().numpy())
    keys = ("mode", "target", "z_threshold", "z_cap", "tau_r", "tau_eps", "kappa", "min_freq", "min_active")
    keys += ("min_contexts", "novelty_cos")
    table = attribute(
        pd.read_parquet(smk.input.latents),
        pd.read_parquet(smk.input.betas),
        geometry=geometry,
        **{k: opts[k] for k in keys},
    )
    table.to_parquet(smk.output.attribution, index=False)
    summary = attribution_summary(table, {k: opts[k] for k in keys})
    with open(smk.output.summary, "w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    selected = select_for_interpretation(
        table, top_k=opts["top_k"], n_unchanged=opts["n_unchanged"], seed=opts["seed"]
    )
    with open(smk.output.selected, "w") as fh:
        json.dump([int(x) for x in selected], fh)
    log.info("attribution: %s; %d latents selected for interpretation", summary["directions"], len(selected))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
