"""Rule combine_sanity_tables: every sanity-check table -> one summary CSV and markdown, with
what each random-label copy reached (its metrics.json) beside its rows."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.sanity_tables import combine_sanity_tables

run_job(
    snakemake,  # noqa: F821
    lambda job: combine_sanity_tables(
        parts=list(job.input.tables),
        out_csv=job.output.csv,
        out_md=job.output.markdown,
        random_label_metrics=list(job.input.random_labels),
    ),
    needs_device=False,
)
