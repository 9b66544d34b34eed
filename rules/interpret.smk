# interpret: explain the attributed latents with an LLM (a vLLM server started and stopped inside
# the job, any OpenAI-compatible endpoint, or the no-LLM keywords backend). Explanations are
# cached per (latent, prompt hash, explainer) in results/{pair}/cache/, outside the outputs, so a
# re-run only asks for what changed. map_categories: a category per latent from the explanation
# (sentence embeddings or the LLM) and from provenance (corpus labels of its activation mass).
# map_contexts: label-free categories of every live latent from its top contexts (no LLM).


rule interpret:
    input:
        unpack(interpret_inputs),
        contexts=rules.collect_contexts.output.contexts,
        attribution=rules.attribute.output.attribution,
        code=script_code("interpret"),
    output:
        explanations=f"{RESULTS}/{{pair}}/explanations.jsonl",
    log:
        logs("interpret/{pair}.log"),
    benchmark:
        benchmarks("interpret/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=lambda wc: explainer_gpus(),
    params:
        options=config["interpret"],
        cache=lambda wc: f"{RESULTS}/{wc.pair}/cache/interpret.jsonl",
    script:
        "../workflow_scripts/interpret.py"


rule map_categories:
    input:
        unpack(map_categories_inputs),
        explanations=rules.interpret.output.explanations,
        attribution=rules.attribute.output.attribution,
        category_mass=rules.latent_stats.output.category_mass,
        categories=category_file(),
        code=script_code("map_categories"),
    output:
        categories=f"{RESULTS}/{{pair}}/categories.parquet",
    log:
        logs("map_categories/{pair}.log"),
    benchmark:
        benchmarks("map_categories/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=lambda wc: explainer_gpus() if "llm" in config["categories"]["methods"] else 0,
    params:
        options=section("categories", exclude=("file", "contexts")),
        interpret=lambda wc: config["interpret"] if "llm" in config["categories"]["methods"] else {},
        cache=lambda wc: f"{RESULTS}/{wc.pair}/cache/classify.jsonl",
    script:
        "../workflow_scripts/map_categories.py"


rule map_contexts:
    input:
        topk=rules.latent_stats.output.topk,
        attribution=rules.attribute.output.attribution,
        tokens=lambda wc: pair_corpus(wc.pair, "tokens"),
        tokenizer=lambda wc: model_dir(config["pairs"][wc.pair]["base"]),
        categories=category_file(),
        code=script_code("map_contexts"),
    output:
        context_categories=f"{RESULTS}/{{pair}}/context_categories.parquet",
    log:
        logs("map_contexts/{pair}.log"),
    benchmark:
        benchmarks("map_contexts/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    params:
        options=section("categories", ("contexts",))["contexts"],
        embedding=lambda wc: config["categories"]["embedding"],
    script:
        "../workflow_scripts/map_contexts.py"
