"""Rule cross_evaluate: every secondary of an experiment on every method's test maps."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.evaluate import cross_evaluate
from saliency_fingerprints.jobs import run_job


def main(job):
    methods, primaries = job.params.methods, job.params.primaries
    secondaries = dict(zip(methods, job.input.secondaries, strict=True))
    stores = list(job.input.maps)
    maps = {m: stores[i * len(primaries) : (i + 1) * len(primaries)] for i, m in enumerate(methods)}
    cross_evaluate(
        job.wildcards.experiment,
        job.wildcards.variant,
        primaries,
        secondaries,
        maps,
        job.params.secondary,
        job.output.table,
        job.device,
        job.threads,
    )


run_job(snakemake, main)  # noqa: F821
