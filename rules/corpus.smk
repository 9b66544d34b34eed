# sample_corpus: deterministic sample of N tokens from the configured sources, packed into
# fixed-length contexts (tokens.zarr) with per-document labels (docs.parquet).


rule sample_corpus:
    input:
        tokenizer=corpus_tokenizer_dir,
        categories=gcide_category_file,
        code=script_code("sample_corpus"),
    output:
        tokens=directory(f"{RESULTS}/corpus/{{corpus}}/tokens.zarr"),
        docs=f"{RESULTS}/corpus/{{corpus}}/docs.parquet",
    log:
        logs("sample_corpus/{corpus}.log"),
    benchmark:
        benchmarks("sample_corpus/{corpus}.tsv")
    conda:
        "../envs/mneme.yaml"
    params:
        corpus=lambda wc: config["corpora"][wc.corpus],
        gcide=gcide_params,
        tokenizer_model=lambda wc: corpus_tokenizer(config, wc.corpus),
    script:
        "../workflow_scripts/sample_corpus.py"
