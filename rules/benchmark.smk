# benchmark: score one model per category (the ground truth of the evaluation), by
# benchmark.kind: gcide = built-in log-likelihood tasks on held-out GCIDE items; mmlu = MMLU
# questions (hub or a local file), subjects mapped to categories; lm_eval = per-task accuracies
# imported from the model's lm-evaluation-harness results file (no model needed). Items are built
# deterministically from the config, so every model sees the same.

BENCHMARK_KIND = config["benchmark"]["kind"]


rule benchmark:
    input:
        unpack(
            lambda wc: kind_inputs(
                config["benchmark"],
                wc.model,
                model_dir(wc.model),
                lambda p: resolve_path(p, workflow.basedir),
            )
        ),
        categories=gcide_category_input() if BENCHMARK_KIND == "gcide" else [],
        code=script_code("benchmark"),
    output:
        results=f"{RESULTS}/benchmarks/{{model}}/{BENCHMARK_KIND}.parquet",
        summary=f"{RESULTS}/benchmarks/{{model}}/{BENCHMARK_KIND}_summary.tsv",
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
        gpu=0 if BENCHMARK_KIND == "lm_eval" else 1,
    params:
        options=kind_options(config["benchmark"]),
        gcide=lambda wc: gcide_settings() if BENCHMARK_KIND == "gcide" else {},
    script:
        "../workflow_scripts/benchmark.py"
