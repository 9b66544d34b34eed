"""Rule report: one self-contained HTML report and summary.tsv over every pair of the config.

``params.files`` is ``{pair: {input key: path}}`` (keys: latents, attribution, attribution_summary,
selected, contexts, categories, evaluation, metrics, validation, crosscoder_config, tokenizer,
reversal) and ``params.meta`` the config's ``pairs`` (base, finetuned, corpus, layer).
"""

from mneme.logs import setup_logging
from mneme.report import build_report


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    summary = build_report(
        {pair: dict(files) for pair, files in smk.params.files.items()},
        smk.output.html,
        smk.output.summary,
        meta=smk.params.meta,
        suite={"table": smk.input.suite, "sensitivity": smk.input.sensitivity},
    )
    log.info("report written for %d pair(s): %s", len(summary), ", ".join(map(str, summary["pair"])))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
