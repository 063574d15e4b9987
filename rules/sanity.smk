# Sanity checks of the saliency methods (beyond the paper): parameter randomisation, data
# randomisation and input invariance, for the primaries and methods in config key sanity_checks.

include: "sanity_common.smk"


rule train_random_label_primary:
    input:
        dataset=zarr_store(DATASET),
    output:
        weights=f"{RANDOM_LABEL_PRIMARY}/model.safetensors",
        metrics=f"{RANDOM_LABEL_PRIMARY}/metrics.json",
    params:
        training=lambda wc: random_label_training(wc.architecture),
        label_seed=lambda wc: sanity_settings()["random_labels"]["seed"],
        target_train_accuracy=lambda wc: random_label_target(),
    wildcard_constraints:
        tag="(?:)",  # empty: sanity checks run on primaries of the default data seed and length
    log:
        f"{LOGS}/train_random_label_primary/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train_random_label_primary.py"


rule sanity_check:
    input:
        unpack(sanity_check_input),
    output:
        table=SANITY_TABLE,
        maps=zarr_store(SANITY_MAPS),
    params:
        method=lambda wc: method_params(wc.method),
        sanity=lambda wc: sanity_params(),
        pass_size=config["saliency"]["pass_size"],
        primary=lambda wc: primary_name(wc.architecture, wc.seed, wc.tag),
    wildcard_constraints:
        tag="(?:)",  # empty: sanity checks run on primaries of the default data seed and length
    log:
        f"{LOGS}/sanity_check/{{method}}/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/sanity_check.py"


rule combine_sanity_tables:
    input:
        tables=lambda wc: [
            SANITY_TABLE.format(method=m, **p.fields)
            for m in sanity_settings()["methods"]
            for p in sanity_primaries(config)
        ],
        random_labels=lambda wc: random_label_metrics(),
    output:
        csv=report(
            f"{RESULTS}/tables/sanity_checks.csv",
            category="Sanity checks",
            caption="../report/sanity_checks.rst",
        ),
        markdown=f"{RESULTS}/tables/sanity_checks.md",
    log:
        f"{LOGS}/combine_sanity_tables.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/combine_sanity_tables.py"


rule plot_sanity_curves:
    input:
        summary=f"{RESULTS}/tables/sanity_checks.csv",
    output:
        png=report(
            f"{RESULTS}/figures/sanity/rank_correlation.png",
            category="Sanity checks",
            caption="../report/sanity_curves.rst",
        ),
    params:
        plots=plot_settings("dpi"),
    log:
        f"{LOGS}/plot_sanity_curves.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_sanity_curves.py"


rule plot_sanity_maps:
    input:
        maps=lambda wc: [
            zarr_store(
                SANITY_MAPS.format(method=m, architecture=wc.architecture, seed=wc.seed, tag=wc.tag)
            )
            for m in sanity_settings()["methods"]
        ],
    output:
        png=report(
            f"{RESULTS}/figures/sanity/maps/{PRIMARY_NAME}.png",
            category="Sanity checks",
            caption="../report/sanity_maps.rst",
        ),
    params:
        methods=lambda wc: list(sanity_settings()["methods"]),
        plots=plot_settings("map_cmap", "dpi"),
    wildcard_constraints:
        tag="(?:)",  # empty: sanity checks run on primaries of the default data seed and length
    log:
        f"{LOGS}/plot_sanity_maps/{PRIMARY_NAME}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_sanity_maps.py"
