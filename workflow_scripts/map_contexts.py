"""Rule map_contexts: label-free categories of every live latent from its top-activating contexts."""

import pandas as pd
from transformers import AutoTokenizer

from mneme.categorize import EmbeddingClassifier, load_category_set
from mneme.context_mapping import map_contexts
from mneme.latent_stats import read_topk
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    setup_logging(smk.log[0])
    set_threads(smk.threads)
    emb = smk.params.embedding
    categories, _general = load_category_set(smk.input.categories)
    classifier = EmbeddingClassifier(
        categories,
        use_examples=emb["use_examples"],
        model_path=emb["model_path"],
        device=emb["device"],
        batch_size=emb["batch_size"],
    )
    attribution = pd.read_parquet(smk.input.attribution, columns=["latent", "direction"])
    live = attribution.loc[attribution["direction"] != "dead", "latent"].to_numpy()
    table = map_contexts(
        read_topk(smk.input.topk),
        smk.input.tokens,
        AutoTokenizer.from_pretrained(smk.input.tokenizer),
        classifier,
        live,
        smk.params.options,
    )
    table.to_parquet(smk.output[0], index=False)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
