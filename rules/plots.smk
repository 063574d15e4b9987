rule plot_heatmap:
    input:
        table=CROSS_EVAL,
    output:
        png=report(
            f"{RESULTS}/figures/cross_evaluation/{{experiment}}/{{variant}}.png",
            category="Experiments",
            subcategory="{experiment}",
            caption="../report/heatmap.rst",
        ),
    params:
        plots=plot_settings("cmap", "dpi"),
    log:
        f"{LOGS}/plot_heatmap/{{experiment}}/{{variant}}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_heatmap.py"


rule plot_map_grid:
    input:
        dataset=zarr_store(DATASET),
        maps=lambda wc: zarr_store(maps_of(wc.experiment, experiment_methods(wc.experiment))),
    output:
        png=report(
            f"{RESULTS}/figures/maps/{{experiment}}.png",
            category="Maps",
            subcategory="{experiment}",
            caption="../report/map_grid.rst",
        ),
    params:
        methods=lambda wc: experiment_methods(wc.experiment),
        primaries=lambda wc: primary_names(wc.experiment),
        variants=lambda wc: experiment_variants(wc.experiment),
        secondary=lambda wc: map_grid_params(wc.experiment),
        plots=plot_settings("map_cmap", "dpi", "map_grid_images"),
    log:
        f"{LOGS}/plot_map_grid/{{experiment}}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_map_grid.py"


rule plot_class_maps:
    input:
        dataset=zarr_store(DATASET),
        maps=lambda wc: zarr_store(maps_of(wc.experiment, ["input_agnostic"])),
    output:
        png=report(
            f"{RESULTS}/figures/class_maps/{{experiment}}.png",
            category="Maps",
            subcategory="{experiment}",
            caption="../report/class_maps.rst",
        ),
    params:
        primaries=lambda wc: primary_names(wc.experiment),
        plots=plot_settings("map_cmap", "dpi"),
    log:
        f"{LOGS}/plot_class_maps/{{experiment}}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_class_maps.py"
