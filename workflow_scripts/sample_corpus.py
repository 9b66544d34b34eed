"""Rule sample_corpus: sample, tokenise and pack one corpus."""

from mneme.corpus import sample_corpus
from mneme.logs import setup_logging
from mneme.models import load_tokenizer


def main(smk) -> None:
    setup_logging(smk.log[0])
    sample_corpus(
        corpus_cfg=smk.params.corpus,
        corpus_name=smk.wildcards.corpus,
        gcide_cfg=smk.params.gcide,
        tokenizer=load_tokenizer(smk.input.tokenizer),
        tokens_path=smk.output.tokens,
        docs_path=smk.output.docs,
        tokenizer_model=smk.params.tokenizer_model,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
