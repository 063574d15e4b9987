"""Rule train_primary: one primary classifier per (architecture, seed, data seed, epochs)."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.configuration import parse_tag, primary_name
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.store import store_root


def main(job):
    """The tag (data seed, epochs) is in the path; the epochs are in params.training."""
    wc = job.wildcards
    train_primary(
        dataset_path=store_root(job.input.dataset),
        architecture=wc.architecture,
        seed=int(wc.seed),
        data_seed=parse_tag(wc.tag)[0],
        name=primary_name(wc.architecture, wc.seed, wc.tag),
        cfg=job.params.training,
        weights_out=job.output.weights,
        metrics_out=job.output.metrics,
        device=job.device,
        threads=job.threads,
    )


run_job(snakemake, main)  # noqa: F821
