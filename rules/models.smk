# prepare_model: resolve a model spec (hub id, local dir, packaged GGUF, tiny random model) into
# results/models/{model}/ with a model card. check_pair: tokenizer and width checks per pair.


rule prepare_model:
    input:
        code=script_code("prepare_model"),
    output:
        model=directory(MODEL_DIR),
    log:
        logs("prepare_model/{model}.log"),
    benchmark:
        benchmarks("prepare_model/{model}.tsv")
    wildcard_constraints:
        model=one_of(PREPARED_MODELS),
    conda:
        "../envs/mneme.yaml"
    params:
        spec=model_spec,
    script:
        "../workflow_scripts/prepare_model.py"


rule check_pair:
    input:
        base=lambda wc: model_dir(config["pairs"][wc.pair]["base"]),
        finetuned=lambda wc: model_dir(config["pairs"][wc.pair]["finetuned"]),
        code=script_code("check_pair"),
    output:
        check=f"{RESULTS}/pairs/{{pair}}/check.json",
    log:
        logs("check_pair/{pair}.log"),
    localrule: True
    conda:
        "../envs/mneme.yaml"
    script:
        "../workflow_scripts/check_pair.py"
