"""Rule train_primary: one primary classifier per (architecture, seed)."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: train_primary(
        store_root(job.input.dataset),
        job.wildcards.architecture,
        int(job.wildcards.seed),
        job.params.training,
        job.output.weights,
        job.output.metrics,
        job.device,
        job.threads,
    ),
)
