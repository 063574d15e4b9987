"""Rule plot_heatmap: one experiment and variant's cross-evaluation as a Table-1 heatmap."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)
import pandas as pd

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_heatmap
from saliency_fingerprints.tables import cell_means


def main(job):
    table = cell_means(pd.read_csv(job.input.table))  # mean over replicates per cell
    title = f"{job.wildcards.experiment} - {job.wildcards.variant}"
    plot_heatmap(
        table=table,
        out=job.output.png,
        title=title,
        cmap=job.params.plots["cmap"],
        dpi=job.params.plots["dpi"],
    )


run_job(snakemake, main, needs_device=False)  # noqa: F821
