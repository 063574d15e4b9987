"""Rule map_diagnostics: every map store -> one diagnostics row each, as a CSV and markdown."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.diagnostics import write_diagnostics
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.store import store_root

run_job(
    snakemake,  # noqa: F821
    lambda job: write_diagnostics(
        paths=[store_root(p) for p in job.input.maps],
        out_csv=job.output.csv,
        out_md=job.output.markdown,
    ),
    needs_device=False,
)
