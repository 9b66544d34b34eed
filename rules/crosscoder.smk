# train_crosscoder: BatchTopK crosscoder on a pair's paired activation stores, streamed from
# zarr. A killed job resumes from the checkpoint kept in results/{pair}/crosscoder.tmp/.


rule train_crosscoder:
    input:
        unpack(lambda wc: pair_manifests(wc.pair)),
        code=script_code("train_crosscoder"),
    output:
        crosscoder=directory(f"{RESULTS}/{{pair}}/crosscoder"),
    log:
        logs("train_crosscoder/{pair}.log"),
    benchmark:
        benchmarks("train_crosscoder/{pair}.tsv")
    conda:
        "../envs/mneme.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        # keys that do not change the weights (log_every, checkpoint_every, ...) are read by the
        # script from the config, so editing them re-runs nothing
        options=section("crosscoder", exclude=NON_TRAJECTORY_KEYS),
    script:
        "../workflow_scripts/train_crosscoder.py"
