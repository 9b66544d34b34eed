"""Rule train_crosscoder: train the pair's crosscoder (resumes from a kept checkpoint)."""

from mneme.activation_store import PairedStores
from mneme.contracts import NON_TRAJECTORY_KEYS
from mneme.logs import set_threads, setup_logging
from mneme.training import train_crosscoder


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    stores = PairedStores(smk.input.base, smk.input.finetuned)
    section = smk.config["crosscoder"]
    progress = {k: section[k] for k in NON_TRAJECTORY_KEYS if k in section}
    summary = train_crosscoder(stores, smk.output[0], {**smk.params.options, **progress}, resume=True)
    log.info("validation: %s", summary)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
