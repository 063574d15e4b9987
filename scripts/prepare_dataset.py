"""Rule prepare_dataset: dataset source -> labelled Zarr store."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.jobs import run_job

run_job(snakemake, lambda job: prepare_dataset(job.params.dataset, job.output.store))  # noqa: F821
