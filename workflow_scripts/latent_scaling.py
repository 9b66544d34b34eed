"""Rule latent_scaling: closed-form betas for every live latent, both probes, one pass."""

import json

from mneme.latent_scaling import compute_betas
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    compute_betas(
        smk.input.crosscoder,
        smk.input.base,
        smk.input.finetuned,
        smk.output.betas,
        max_rows=smk.params.options["max_rows"],
    )
    with open(smk.output.cost) as fh:
        cost = json.load(fh)
    log.info("latent scaling took %.2fx one inference pass over the same tokens", cost["cost_vs_inference"])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
