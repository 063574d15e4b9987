# Map diagnostics: per map store, how much of each map exists before the per-map scaling
# (near-empty and all-zero maps), MP's final score and deleted area, IG's completeness.


rule map_diagnostics:
    input:
        # every map store of every experiment, once each (experiments share stores)
        maps=zarr_store(
            list(
                dict.fromkeys(
                    store
                    for experiment in config["experiments"]
                    for store in all_maps_of(experiment, experiment_methods(experiment))
                )
            )
        ),
    output:
        csv=report(
            f"{RESULTS}/tables/map_diagnostics.csv",
            category="Maps",
            subcategory="Diagnostics",
            caption="../report/map_diagnostics.rst",
        ),
        markdown=f"{RESULTS}/tables/map_diagnostics.md",
    log:
        f"{LOGS}/map_diagnostics.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/map_diagnostics.py"
