"""Rule compute_saliency: one method's maps for one primary, streamed into a Zarr store."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.saliency import compute_saliency_maps

run_job(
    snakemake,  # noqa: F821
    lambda job: compute_saliency_maps(
        job.input.dataset,
        job.input.weights,
        job.output.store,
        job.wildcards.method,
        job.params.method,
        job.params.saliency,
        job.params.primary,
        job.device,
        job.threads,
    ),
)
