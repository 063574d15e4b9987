rule compute_saliency:
    input:
        dataset=DATASET,
        weights=f"{PRIMARY}/model.safetensors",
    output:
        store=directory(MAPS),
    params:
        method=lambda wc: method_params(wc.method),
        saliency=config["saliency"],
        primary=lambda wc: primary_name(wc.architecture, wc.seed),
    log:
        f"{LOGS}/compute_saliency/{{method}}/{{architecture}}-seed{{seed}}.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/compute_saliency.py"
