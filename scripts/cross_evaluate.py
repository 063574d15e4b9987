"""Rule cross_evaluate: every replicate's secondaries on every method's test maps, with the
class-cue control."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.evaluate import cross_evaluate
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.secondary import replicate_maps
from saliency_fingerprints.store import store_root


def main(job):
    methods = job.params.methods
    weights = dict(zip(methods, job.input.secondaries, strict=True))
    replicates = replicate_maps(
        job.params.replicates, methods, job.params.target, [store_root(p) for p in job.input.maps]
    )
    cross_evaluate(
        experiment=job.wildcards.experiment,
        variant=job.wildcards.variant,
        replicates=[{**r, "secondaries": weights} for r in replicates],
        cfg=job.params.secondary,
        out_csv=job.output.table,
        device=job.device,
        threads=job.threads,
    )


run_job(snakemake, main)  # noqa: F821
