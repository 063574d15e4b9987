rule prepare_dataset:
    input:
        unpack(local_dataset_input),
    output:
        store=zarr_store(DATASET),
    params:
        dataset=canonical(config["dataset"]),
    log:
        f"{LOGS}/prepare_dataset.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/prepare_dataset.py"
