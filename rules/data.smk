rule prepare_dataset:
    output:
        store=directory(DATASET),
    params:
        dataset=config["dataset"],
    log:
        f"{LOGS}/prepare_dataset.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/prepare_dataset.py"
