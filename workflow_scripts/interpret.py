"""Rule interpret: explain the pair's attributed latents with the configured LLM backend."""

from mneme.interpret import run_interpretation
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    table = run_interpretation(
        dict(smk.params.options),
        smk.input.contexts,
        smk.input.attribution,
        smk.input.tokenizer,
        smk.params.cache,
        smk.output[0],
        explainer_model_dir=smk.input.get("explainer"),
        tokens_zarr=smk.input.get("tokens"),
        server_log=smk.log[0] + ".server",
    )
    log.info("%d explanations written", len(table))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
