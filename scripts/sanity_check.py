"""Rule sanity_check: one method on one primary under parameter randomisation, permuted-label
training and an input shift; per-image similarities to the primary's own maps."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.sanity import run_sanity_checks
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: run_sanity_checks(
        store_root(job.input.dataset),
        job.input.weights,
        job.input.get("random_labels"),
        job.output.table,
        store_root(job.output.maps),
        job.wildcards.method,
        job.params.method,
        job.params.sanity,
        {"pass_size": job.params.pass_size, "target": job.params.sanity["target"]},
        job.params.primary,
        job.device,
        job.threads,
    ),
)
