"""Rule train_random_label_primary: a primary's copy trained on permuted labels (the data
randomisation sanity check). A script of its own rather than a flag of train_primary.py, so
that adding it changed nothing that reruns finished primaries."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.primary import train_primary


def main(job):
    train_primary(
        job.input.dataset,
        job.wildcards.architecture,
        int(job.wildcards.seed),
        job.params.training,
        job.output.weights,
        job.output.metrics,
        job.device,
        job.threads,
        label_permutation_seed=job.params.label_seed,
    )


run_job(snakemake, main)  # noqa: F821
