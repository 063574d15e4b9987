"""Rule train_secondary: every replicate's secondary learns which primary made a map."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.secondary import replicate_maps, train_secondary
from saliency_fingerprints.store import store_root


def main(job):
    method = job.wildcards.method
    replicates = replicate_maps(
        job.params.replicates, [method], job.params.target, [store_root(p) for p in job.input.maps]
    )
    train_secondary(
        experiment=job.wildcards.experiment,
        method=method,
        variant=job.wildcards.variant,
        replicates=[{**r, "maps": r["maps"][method]} for r in replicates],
        cfg=job.params.secondary,
        weights_out=job.output.weights,
        metrics_out=job.output.metrics,
        device=job.device,
        threads=job.threads,
    )


run_job(snakemake, main)  # noqa: F821
