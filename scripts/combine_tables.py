"""Rule combine_tables: all experiments' per-replicate cross-evaluations -> the per-replicate CSV,
the per-cell summary CSV and the markdown report."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.tables import combine_tables

run_job(
    snakemake,  # noqa: F821
    lambda job: combine_tables(
        parts=list(job.input.parts),
        out_csv=job.output.csv,
        out_md=job.output.markdown,
        out_replicates=job.output.replicates,
        primary_metrics=list(job.input.primaries),
    ),
    needs_device=False,
)
