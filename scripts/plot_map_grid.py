"""Rule plot_map_grid: example maps of the same images for every method and primary."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.datasets import open_dataset
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_map_grid
from saliency_fingerprints.store import store_root


def main(job):
    methods, primaries = job.params.methods, job.params.primaries
    stores = [store_root(p) for p in job.input.maps]
    grid = {
        m: dict(zip(primaries, stores[i * len(primaries) : (i + 1) * len(primaries)], strict=True))
        for i, m in enumerate(methods)
    }
    dataset, _ = open_dataset(store_root(job.input.dataset))
    plots, secondary = job.params.plots, job.params.secondary
    plot_map_grid(
        stores=grid,
        out=job.output.png,
        n_images=plots["map_grid_images"],
        variants=job.params.variants,
        preprocess=secondary["preprocess"],
        shuffle_seed=secondary.get("shuffle_seed", 0),  # absent when every variant is "original"
        cmap=plots["map_cmap"],
        dpi=plots["dpi"],
        dataset=dataset,
    )


run_job(snakemake, main, needs_device=False)  # noqa: F821
