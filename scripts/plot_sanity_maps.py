"""Rule plot_sanity_maps: one primary's maps under every sanity-check change."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_sanity_maps
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: plot_sanity_maps(
        stores=dict(zip(job.params.methods, map(store_root, job.input.maps), strict=True)),
        out=job.output.png,
        cmap=job.params.plots["map_cmap"],
        dpi=job.params.plots["dpi"],
    ),
    needs_device=False,
)
