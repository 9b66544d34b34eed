# make_organism: build a fine-tuned model (RMU unlearning, gradient ascent or a plain fine-tune)
# from a prepared base model, on GCIDE organism-part data; output is a normal HF directory.


rule make_organism:
    input:
        base=lambda wc: model_dir(config["models"][wc.model]["base"]),
        categories=gcide_category_input(),
        code=script_code("make_organism"),
    output:
        model=directory(MODEL_DIR),
    log:
        logs("make_organism/{model}.log"),
    benchmark:
        benchmarks("make_organism/{model}.tsv")
    wildcard_constraints:
        model=one_of(ORGANISM_MODELS),
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        spec=model_spec,
        gcide=lambda wc: gcide_settings(),
    script:
        "../workflow_scripts/make_organism.py"
