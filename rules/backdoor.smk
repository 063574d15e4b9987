# The backdoor experiment (Akhtar & Jalwana 2023, "Backdoor detection"; config key backdoor):
# a BadNets-poisoned copy of each listed primary, input-agnostic maps of every class of the clean
# and of the backdoored primary, and how much of each map lies in the trigger patch.

include: "backdoor_common.smk"


rule train_backdoor_primary:
    input:
        dataset=zarr_store(DATASET),
        clean=f"{PRIMARY}/model.safetensors",  # its attack success rate is the baseline
    output:
        weights=f"{BACKDOOR_PRIMARY}/model.safetensors",
        metrics=f"{BACKDOOR_PRIMARY}/metrics.json",
    params:
        training=lambda wc: primary_training(wc.tag),
        backdoor=lambda wc: backdoor_poisoning(),
    wildcard_constraints:
        tag="(?:)",  # empty: backdoored copies of primaries of the default data seed and length
    log:
        f"{LOGS}/train_backdoor_primary/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train_backdoor_primary.py"


rule backdoor_maps:
    input:
        dataset=zarr_store(DATASET),
        weights=backdoor_weights,
    output:
        maps=zarr_store(BACKDOOR_MAPS),
    params:
        maps=lambda wc: backdoor_maps_params(),
    wildcard_constraints:
        tag="(?:)",
        kind="clean|backdoored",
    log:
        f"{LOGS}/backdoor_maps/{{kind}}/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/backdoor_maps.py"


rule backdoor_table:
    input:
        maps=lambda wc: backdoor_stores(),
        metrics=lambda wc: backdoor_metrics(),
    output:
        csv=report(
            f"{RESULTS}/tables/backdoor.csv",
            category="Backdoor",
            caption="../report/backdoor_table.rst",
        ),
        markdown=f"{RESULTS}/tables/backdoor.md",
    params:
        backdoor=lambda wc: backdoor_poisoning("target_class", "poison_fraction", "trigger"),
    log:
        f"{LOGS}/backdoor_table.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/backdoor_table.py"


rule plot_backdoor:
    input:
        dataset=zarr_store(DATASET),
        maps=lambda wc: backdoor_stores(),
        metrics=lambda wc: backdoor_metrics(),
    output:
        png=report(
            f"{RESULTS}/figures/backdoor.png",
            category="Backdoor",
            caption="../report/backdoor_figure.rst",
        ),
    params:
        backdoor=lambda wc: backdoor_poisoning("target_class", "trigger"),
        plots=plot_settings("map_cmap", "dpi"),
    log:
        f"{LOGS}/plot_backdoor.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_backdoor.py"
