# evaluate: ground truth per category from the two models' benchmark results (change and its
# significance), mneme's prediction from the mapped, attributed latents (never the benchmark),
# accuracy / precision / recall / F1 with baselines (all-positive, random, decoder-norm only,
# provenance only, oracle).


rule evaluate:
    input:
        base=lambda wc: benchmark_results(wc.pair)[0],
        finetuned=lambda wc: benchmark_results(wc.pair)[1],
        categories=f"{RESULTS}/{{pair}}/categories.parquet",
        attribution=f"{RESULTS}/{{pair}}/attribution.parquet",
        category_mass=f"{RESULTS}/{{pair}}/category_mass.parquet",
        code=script_code("evaluate"),
    output:
        f"{RESULTS}/{{pair}}/evaluation.json",
    log:
        logs("evaluate/{pair}.log"),
    localrule: True
    conda:
        "../envs/mneme.yaml"
    params:
        options=config["evaluate"],
    script:
        "../workflow_scripts/evaluate.py"
