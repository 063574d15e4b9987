"""Rule train_primary: one primary classifier per (architecture, seed)."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: train_primary(
        dataset_path=store_root(job.input.dataset),
        architecture=job.wildcards.architecture,
        seed=int(job.wildcards.seed),
        cfg=job.params.training,
        weights_out=job.output.weights,
        metrics_out=job.output.metrics,
        device=job.device,
        threads=job.threads,
    ),
)
