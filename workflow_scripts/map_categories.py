"""Rule map_categories: a category (and confidence) per latent from each enabled method."""

from mneme.categorize import run_map_categories
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    table = run_map_categories(
        dict(smk.params.options),
        smk.input.explanations,
        smk.input.categories,
        smk.output[0],
        attribution_path=smk.input.attribution,
        category_mass_path=smk.input.category_mass,
        interpret_cfg=dict(smk.params.interpret) or None,
        explainer_model_dir=smk.input.get("explainer"),
        cache_path=smk.params.cache,
        server_log=smk.log[0] + ".server",
    )
    log.info("categories: %s", table["category"].value_counts().to_dict() if len(table) else {})


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
