# activation_diff: the no-crosscoder baseline (per-category relative change of the activations).
# evaluate: ground truth per category from the two models' benchmark results (its change beyond
# the general items' change, and its significance); every predictor from the pair's own files
# (never the benchmark): mneme's routes and the baselines, each scored on all categories and on
# the side effects.


rule activation_diff:
    input:
        unpack(lambda wc: pair_manifests(wc.pair)),
        tokens=lambda wc: pair_corpus(wc.pair, "tokens"),
        docs=lambda wc: pair_corpus(wc.pair, "docs"),
        code=script_code("activation_diff"),
    output:
        activation_diff=f"{RESULTS}/{{pair}}/activation_diff.parquet",
    log:
        logs("activation_diff/{pair}.log"),
    benchmark:
        benchmarks("activation_diff/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    script:
        "../workflow_scripts/activation_diff.py"


rule evaluate:
    input:
        unpack(evaluate_inputs),
        base=lambda wc: benchmark_results(wc.pair)[0],
        finetuned=lambda wc: benchmark_results(wc.pair)[1],
        categories=rules.map_categories.output.categories,
        attribution=rules.attribute.output.attribution,
        category_mass=rules.latent_stats.output.category_mass,
        activation_diff=rules.activation_diff.output.activation_diff,
        code=script_code("evaluate"),
    output:
        evaluation=f"{RESULTS}/{{pair}}/evaluation.json",
    log:
        logs("evaluate/{pair}.log"),
    localrule: True
    conda:
        "../envs/mneme.yaml"
    params:
        options=config["evaluate"],
        target=lambda wc: pair_target(config, wc.pair),
    script:
        "../workflow_scripts/evaluate.py"


rule suite:
    input:
        unpack(suite_inputs),
        code=script_code("suite"),
    output:
        table=report(f"{RESULTS}/suite.tsv", caption="../report/suite.rst", category="Suite"),
        sensitivity=f"{RESULTS}/suite_sensitivity.tsv",
    log:
        logs("suite/suite.log"),
    benchmark:
        benchmarks("suite/suite.tsv")
    conda:
        "../envs/mneme.yaml"
    params:
        pairs=list(config["pairs"]),
        holdout=[p for p, spec in config["pairs"].items() if spec["holdout"]],
        # the configured value of each setting of the sensitivity grid (its row is marked)
        defaults={
            "z_pred": config["evaluate"]["z_pred"],
            "membership": config["evaluate"]["membership"],
            "reference": config["evaluate"]["reference"],
            "target": config["attribution"]["target"],
            "z_cap": config["attribution"]["z_cap"],
            "min_contexts": config["attribution"]["min_contexts"],
        },
        # the attribution's other eligibility settings, which the grid keeps
        eligibility={k: config["attribution"][k] for k in ("min_active", "min_freq")},
        # the grid re-derives robust mode: with another mode no row of it is the run's
        robust=config["attribution"]["mode"] == "robust",
        general=lambda wc: general_category(),
    script:
        "../workflow_scripts/suite.py"
