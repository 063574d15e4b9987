"""Rule train_random_label_primary: a primary's copy trained on permuted labels until it has
memorised them (the data randomisation sanity check): it stops at the first epoch whose train
accuracy reaches sanity_checks.random_labels.target_train_accuracy, or at the epoch cap. A
script of its own rather than a flag of train_primary.py, so that adding it changed nothing that
reruns finished primaries."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.sanity import train_random_label_primary
from saliency_fingerprints.store import store_root


def main(job):
    train_random_label_primary(
        dataset_path=store_root(job.input.dataset),
        architecture=job.wildcards.architecture,
        seed=int(job.wildcards.seed),
        cfg=job.params.training,
        label_seed=job.params.label_seed,
        target_train_accuracy=job.params.target_train_accuracy,
        weights_out=job.output.weights,
        metrics_out=job.output.metrics,
        device=job.device,
        threads=job.threads,
    )


run_job(snakemake, main)  # noqa: F821
