"""Rule sanity_check: one method on one primary under parameter randomisation, permuted-label
training and an input shift; per-image similarities to the primary's own maps."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.sanity import run_sanity_checks
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: run_sanity_checks(
        dataset_path=store_root(job.input.dataset),
        weights_path=job.input.weights,
        random_label_weights_path=job.input.get("random_labels"),
        table_out=job.output.table,
        maps_out=store_root(job.output.maps),
        method=job.wildcards.method,
        method_params=job.params.method,
        cfg=job.params.sanity,
        saliency_cfg={"pass_size": job.params.pass_size, "target": job.params.sanity["target"]},
        primary=job.params.primary,
        device=job.device,
        threads=job.threads,
    ),
)
