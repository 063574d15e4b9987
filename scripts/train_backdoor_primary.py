"""Rule train_backdoor_primary: a primary's copy trained with a BadNets trigger planted in a
fraction of its training images (config key backdoor); its metrics hold the clean test accuracy
and the attack success rate, and the clean primary's beside them. A script of its own rather
than a flag of train_primary.py, so that adding it changed nothing that reruns finished
primaries."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.backdoor import train_backdoor_primary
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.store import store_root


def main(job):
    train_backdoor_primary(
        dataset_path=store_root(job.input.dataset),
        clean_weights=job.input.clean,
        architecture=job.wildcards.architecture,
        seed=int(job.wildcards.seed),
        cfg=job.params.training,
        backdoor=job.params.backdoor,
        weights_out=job.output.weights,
        metrics_out=job.output.metrics,
        device=job.device,
        threads=job.threads,
    )


run_job(snakemake, main)  # noqa: F821
