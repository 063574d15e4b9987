# Studies (beyond the paper; config key `studies`): each study's levels are ordinary experiments
# (expanded in common.smk, STUDIES); this rule gathers their cross-evaluations into one table and
# one figure per study. Study experiments stay out of tables/cross_evaluation.*.


rule study_table:
    input:
        parts=lambda wc: study_parts(wc.study),
        primaries=lambda wc: study_primary_metrics(wc.study),
    output:
        csv=report(
            f"{RESULTS}/tables/studies/{{study}}.csv",
            category="Studies",
            subcategory="{study}",
            caption="../report/study_table.rst",
        ),
        markdown=f"{RESULTS}/tables/studies/{{study}}.md",
        png=report(
            f"{RESULTS}/figures/studies/{{study}}.png",
            category="Studies",
            subcategory="{study}",
            caption="../report/study_figure.rst",
        ),
    params:
        levels=lambda wc: study_levels(wc.study),
        plots=plot_settings("dpi"),
    wildcard_constraints:
        study="[a-z_]+",
    log:
        f"{LOGS}/study_table/{{study}}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/study_table.py"
