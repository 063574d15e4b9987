"""Rule compute_saliency: one method's maps for one primary, streamed into a Zarr store."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.saliency import compute_saliency_maps
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: compute_saliency_maps(
        dataset_path=store_root(job.input.dataset),
        weights_path=job.input.weights,
        out=store_root(job.output.store),
        method=job.wildcards.method,
        method_params=job.params.method,
        cfg=job.params.saliency,
        primary=job.params.primary,
        device=job.device,
        threads=job.threads,
    ),
)
