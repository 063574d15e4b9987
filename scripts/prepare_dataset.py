"""Rule prepare_dataset: dataset source -> labelled Zarr store."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: prepare_dataset(cfg=job.params.dataset, out=store_root(job.output.store)),
    needs_device=False,
)
