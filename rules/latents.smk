# Per-pair latent analysis (method.md F10-F12): latent_stats (decoder norms, frequencies, top-N
# contexts, category mass), latent_scaling (closed-form betas, one pass), attribute (amplified /
# suppressed / unchanged), collect_contexts (example windows for the latents to interpret).
# The latents section is split between the two passes so that an edit re-runs only its own.
STATS_KEYS = ("n_top", "n_reservoir", "max_rows", "seed")
EXAMPLE_KEYS = ("window", "n_examples", "n_quantile_examples", "n_quantiles", "n_negative", "seed")


rule latent_stats:
    input:
        unpack(lambda wc: pair_manifests(wc.pair)),
        crosscoder=rules.train_crosscoder.output.crosscoder,
        tokens=lambda wc: pair_corpus(wc.pair, "tokens"),
        docs=lambda wc: pair_corpus(wc.pair, "docs"),
        code=script_code("latent_stats"),
    output:
        latents=f"{RESULTS}/{{pair}}/latents.parquet",
        topk=f"{RESULTS}/{{pair}}/topk.npz",
        category_mass=f"{RESULTS}/{{pair}}/category_mass.parquet",
    log:
        logs("latent_stats/{pair}.log"),
    benchmark:
        benchmarks("latent_stats/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    params:
        options=section("latents", STATS_KEYS),
    script:
        "../workflow_scripts/latent_stats.py"


rule latent_scaling:
    input:
        unpack(lambda wc: pair_manifests(wc.pair)),
        crosscoder=rules.train_crosscoder.output.crosscoder,
        code=script_code("latent_scaling"),
    output:
        betas=f"{RESULTS}/{{pair}}/betas.parquet",
        cost=f"{RESULTS}/{{pair}}/scaling_cost.json",
    log:
        logs("latent_scaling/{pair}.log"),
    benchmark:
        benchmarks("latent_scaling/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    params:
        options=config["scaling"],
    script:
        "../workflow_scripts/latent_scaling.py"


rule attribute:
    input:
        latents=rules.latent_stats.output.latents,
        crosscoder=rules.train_crosscoder.output.crosscoder,
        betas=rules.latent_scaling.output.betas,
        code=script_code("attribute"),
    output:
        attribution=f"{RESULTS}/{{pair}}/attribution.parquet",
        summary=f"{RESULTS}/{{pair}}/attribution_summary.json",
        selected=f"{RESULTS}/{{pair}}/selected_latents.json",
    log:
        logs("attribute/{pair}.log"),
    localrule: True
    conda:
        "../envs/mneme.yaml"
    params:
        options=config["attribution"],
    script:
        "../workflow_scripts/attribute.py"


rule collect_contexts:
    input:
        unpack(lambda wc: pair_manifests(wc.pair)),
        crosscoder=rules.train_crosscoder.output.crosscoder,
        tokens=lambda wc: pair_corpus(wc.pair, "tokens"),
        topk=rules.latent_stats.output.topk,
        selected=rules.attribute.output.selected,
        code=script_code("collect_contexts"),
    output:
        contexts=f"{RESULTS}/{{pair}}/contexts.parquet",
    log:
        logs("collect_contexts/{pair}.log"),
    benchmark:
        benchmarks("collect_contexts/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    params:
        options=section("latents", EXAMPLE_KEYS),
    script:
        "../workflow_scripts/collect_contexts.py"
