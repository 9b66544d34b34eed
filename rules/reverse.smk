# reverse (optional, per pair: pairs.<pair>.reverse): retrain the fine-tuned model on the
# top-activating corpus contexts of the latents mapped to a side-effect category, and on a random
# sample of equal size as the control; re-score the benchmark and report the recovery ratio.


rule reverse:
    input:
        unpack(reverse_benchmark_inputs),
        finetuned=lambda wc: model_dir(config["pairs"][wc.pair]["finetuned"]),
        evaluation=rules.evaluate.output.evaluation,
        attribution=rules.attribute.output.attribution,
        categories=rules.map_categories.output.categories,
        category_mass=rules.latent_stats.output.category_mass,
        topk=rules.latent_stats.output.topk,
        tokens=lambda wc: pair_corpus(wc.pair, "tokens"),
        code=script_code("reverse"),
    output:
        result=f"{RESULTS}/{{pair}}/reversal.json",
        scored=f"{RESULTS}/{{pair}}/reversal_items.parquet",
    log:
        logs("reverse/{pair}.log"),
    benchmark:
        benchmarks("reverse/{pair}.tsv")
    wildcard_constraints:
        pair=one_of(reversal_pairs()),
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        options=config["reverse"],
        target=lambda wc: pair_target(config, wc.pair),
        benchmark=kind_options(config["benchmark"]),
        task=config["evaluate"]["task"],
        gcide=lambda wc: gcide_settings(),
    script:
        "../workflow_scripts/reverse.py"
