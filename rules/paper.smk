# The comparison with the paper, requested only when the config maps the paper's tables onto our
# experiments (key `paper_comparison`, absent in config/config.yaml): its Table 1 and shuffled
# control next to ours, and its Figures 1 and 2 redrawn from our maps.


include: "paper_common.smk"


rule paper_comparison:
    input:
        table=f"{RESULTS}/tables/cross_evaluation.csv",
    output:
        csv=report(
            f"{RESULTS}/tables/paper_comparison.csv",
            category="Experiments",
            subcategory="Comparison with the paper",
            caption="../report/paper_comparison.rst",
        ),
        markdown=f"{RESULTS}/tables/paper_comparison.md",
    params:
        comparison=canonical(PAPER),
    log:
        f"{LOGS}/paper_comparison.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/paper_comparison.py"


rule paper_figure:
    input:
        dataset=zarr_store(DATASET),
        maps=lambda wc: [
            zarr_store(path)
            for p in paper_figure_panels()
            for by_primary in p["stores"].values()
            for path in by_primary.values()
        ],
    output:
        png=report(
            f"{RESULTS}/figures/paper_figures.png",
            category="Maps",
            subcategory="Like the paper's figures",
            caption="../report/paper_figures.rst",
        ),
    params:
        # not canonical as a whole: a panel's stores are ordered (method rows, primary columns)
        # from the experiment's lists; its config part (preprocess) is canonical
        panels=lambda wc: paper_figure_panels(),
        images=PAPER.get("figure_images", 6),
        plots=plot_settings("map_cmap", "dpi"),
    log:
        f"{LOGS}/paper_figure.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/paper_figure.py"
