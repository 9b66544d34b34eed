# benchmark: score one model per category on held-out items (the ground truth of the
# evaluation). Items are built deterministically from the config, so every model sees the same.


rule benchmark:
    input:
        model=lambda wc: model_dir(wc.model),
        categories=resolve_path(config["gcide"]["categories"], workflow.basedir),
        code=code("benchmark", "gcide", "models"),
    output:
        results=f"{RESULTS}/benchmarks/{{model}}/gcide.parquet",
        summary=f"{RESULTS}/benchmarks/{{model}}/gcide_summary.tsv",
    log:
        logs("benchmark/{model}.log"),
    benchmark:
        benchmarks("benchmark/{model}.tsv")
    wildcard_constraints:
        model=one_of(list(config["models"])),
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        options=config["benchmark"],
        gcide=lambda wc: gcide_settings(),
    script:
        "../workflow_scripts/benchmark.py"
