"""Rule latent_stats: per-latent statistics, top-N contexts and category mass in one pass."""

from mneme.latent_stats import compute_latent_stats
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    opts = smk.params.options
    summary = compute_latent_stats(
        smk.input.crosscoder,
        smk.input.base,
        smk.input.finetuned,
        smk.input.tokens,
        smk.input.docs,
        smk.output.latents,
        smk.output.topk,
        n_top=opts["n_top"],
        n_reservoir=opts["n_reservoir"],
        seed=opts["seed"],
        max_rows=opts["max_rows"],
        out_category_mass=smk.output.category_mass,
    )
    log.info("latent stats: %s", summary)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
