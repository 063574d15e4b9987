"""Rule paper_figure: the paper's Figures 1 and 2 redrawn from our maps, on the same images."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.datasets import open_dataset
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_paper_figure
from saliency_fingerprints.store import store_root


def main(job):
    dataset, _ = open_dataset(store_root(job.input.dataset))
    plots = job.params.plots
    plot_paper_figure(
        panels=job.params.panels,
        out=job.output.png,
        n_images=job.params.images,
        preprocess={},
        shuffle_seed=0,
        cmap=plots["map_cmap"],
        dpi=plots["dpi"],
        dataset=dataset,
    )


run_job(snakemake, main, needs_device=False)  # noqa: F821
