"""Rule combine_tables: all experiments' cross-evaluations -> one CSV and a markdown report."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.evaluate import combine_tables
from saliency_fingerprints.jobs import run_job

run_job(
    snakemake,  # noqa: F821
    lambda job: combine_tables(list(job.input), job.output.csv, job.output.markdown),
)
