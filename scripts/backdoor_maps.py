"""Rule backdoor_maps: input-agnostic maps of every class of a primary, clean or backdoored
(config keys backdoor.n_maps and methods.input_agnostic)."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.backdoor import backdoor_class_maps
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.store import store_root


def main(job):
    settings = job.params.maps
    backdoor_class_maps(
        dataset_path=store_root(job.input.dataset),
        weights_path=job.input.weights,
        maps_out=store_root(job.output.maps),
        method_params=settings["method"],
        saliency_cfg=settings["saliency"],
        n_maps=int(settings["n_maps"]),
        architecture=job.wildcards.architecture,
        seed=int(job.wildcards.seed),
        kind=job.wildcards.kind,
        device=job.device,
        threads=job.threads,
    )


run_job(snakemake, main)  # noqa: F821
