"""Rule study_table: a study's levels' cross-evaluations -> its table (CSV, markdown) and
figure."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.studies import write_study

run_job(
    snakemake,  # noqa: F821
    lambda job: write_study(
        study=job.wildcards.study,
        levels=list(job.params.levels),
        parts=list(job.input.parts),
        primary_metrics=list(job.input.primaries),
        out_csv=job.output.csv,
        out_md=job.output.markdown,
        out_png=job.output.png,
        dpi=job.params.plots["dpi"],
    ),
    needs_device=False,
)
