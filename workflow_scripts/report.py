"""Rule report: one self-contained HTML report and summary.tsv over every pair of the config.

``params.files`` is ``{pair: {input key: path}}`` (keys: latents, attribution, attribution_summary,
selected, contexts, categories, evaluation, metrics, validation, crosscoder_config, tokenizer,
reversal); optional ``params.pairs`` (their order), ``params.meta`` (the config's ``pairs``),
``params.attribution`` (the config's ``attribution``, for the thresholds drawn) and
``params.title``.
"""

from mneme.logs import setup_logging
from mneme.report import build_report


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    params = smk.params
    files = dict(params.files)
    order = list(getattr(params, "pairs", None) or files)
    summary = build_report(
        {pair: dict(files[pair]) for pair in order},
        smk.output.html,
        smk.output.summary,
        title=getattr(params, "title", None) or "mneme report",
        meta=getattr(params, "meta", None),
        attribution_options=getattr(params, "attribution", None),
    )
    log.info("report written for %d pair(s): %s", len(summary), ", ".join(map(str, summary["pair"])))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
