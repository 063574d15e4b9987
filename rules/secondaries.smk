rule train_secondary:
    input:
        maps=lambda wc: zarr_store(all_maps_of(wc.experiment, [wc.method])),
    output:
        weights=f"{SECONDARY}/model.safetensors",
        metrics=f"{SECONDARY}/metrics.json",
    params:
        replicates=lambda wc: replicate_params(wc.experiment),
        target=lambda wc: experiment_target(config, wc.experiment),
        secondary=lambda wc: secondary_params(wc.experiment, [wc.variant]),
    log:
        f"{LOGS}/train_secondary/{{experiment}}/{{method}}/{{variant}}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train_secondary.py"
