"""Rule plot_sanity_curves: similarity to the trained maps as layers are randomised."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)
import pandas as pd

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_sanity_curves

run_job(
    snakemake,  # noqa: F821
    lambda job: plot_sanity_curves(
        summary=pd.read_csv(job.input.summary), out=job.output.png, dpi=job.params.plots["dpi"]
    ),
    needs_device=False,
)
