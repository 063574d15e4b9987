rule train_primary:
    input:
        dataset=zarr_store(DATASET),
    output:
        weights=f"{PRIMARY}/model.safetensors",
        metrics=f"{PRIMARY}/metrics.json",
    params:
        training=lambda wc: primary_training(wc.tag),
    log:
        f"{LOGS}/train_primary/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train_primary.py"
