"""Rule compute_saliency: one method's maps for one primary, streamed into a Zarr store."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.saliency import compute_saliency_maps
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: compute_saliency_maps(
        store_root(job.input.dataset),
        job.input.weights,
        store_root(job.output.store),
        job.wildcards.method,
        job.params.method,
        job.params.saliency,
        job.params.primary,
        job.device,
        job.threads,
    ),
)
