rule compute_saliency:
    input:
        dataset=zarr_store(DATASET),
        weights=f"{PRIMARY}/model.safetensors",
    output:
        store=zarr_store(MAPS),
    params:
        method=lambda wc: method_params(wc.method),
        saliency=lambda wc: saliency_params(wc.target),
        primary=lambda wc: primary_name(wc.architecture, wc.seed, wc.tag),
    log:
        f"{LOGS}/compute_saliency/{{target}}/{{method}}/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/compute_saliency.py"
