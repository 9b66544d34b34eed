# extract_activations: one job per (model, corpus, layer, shard) writes a zarr store of the
# residual stream; index_activations combines the shards into a manifest with the F1 scalar.


rule extract_activations:
    input:
        model=lambda wc: model_dir(wc.model),
        tokens=rules.sample_corpus.output.tokens,
        checks=lambda wc: gate(pair_checks(pairs_finetuning_into(wc.model, wc.corpus, wc.layer))),
        code=script_code("extract_activations"),
    output:
        shard=directory(f"{RESULTS}/activations/{{model}}/{{corpus}}/L{{layer}}/shard_{{shard}}.zarr"),
    log:
        logs("extract_activations/{model}/{corpus}/L{layer}/shard_{shard}.log"),
    benchmark:
        benchmarks("extract_activations/{model}/{corpus}/L{layer}/shard_{shard}.tsv")
    wildcard_constraints:
        layer=r"\d+",
        shard=r"\d+",
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        layer=lambda wc: int(wc.layer),
        shard=lambda wc: int(wc.shard),
        options=config["activations"],
    script:
        "../workflow_scripts/extract_activations.py"


rule index_activations:
    input:
        shards=store_shards,
        code=script_code("index_activations"),
    output:
        manifest=f"{RESULTS}/activations/{{model}}/{{corpus}}/L{{layer}}/manifest.json",
    log:
        logs("index_activations/{model}/{corpus}/L{layer}.log"),
    wildcard_constraints:
        layer=r"\d+",
    localrule: True
    conda:
        "../envs/mneme.yaml"
    params:
        meta=lambda wc: {"model": wc.model, "corpus": wc.corpus, "layer": int(wc.layer)},
    script:
        "../workflow_scripts/index_activations.py"
