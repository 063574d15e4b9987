"""Rule train_secondary: learn which primary of an experiment made a map."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.secondary import train_secondary

run_job(
    snakemake,  # noqa: F821
    lambda job: train_secondary(
        list(job.input.maps),
        job.params.primaries,
        job.wildcards.experiment,
        job.wildcards.method,
        job.wildcards.variant,
        job.params.secondary,
        job.output.weights,
        job.output.metrics,
        job.device,
        job.threads,
    ),
)
