rule train_secondary:
    input:
        maps=lambda wc: maps_of(wc.experiment, [wc.method]),
    output:
        weights=f"{SECONDARY}/model.safetensors",
        metrics=f"{SECONDARY}/metrics.json",
    params:
        primaries=lambda wc: primary_names(wc.experiment),
        secondary=lambda wc: secondary_config(wc.experiment),
    log:
        f"{LOGS}/train_secondary/{{experiment}}/{{method}}/{{variant}}.log",
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train_secondary.py"
