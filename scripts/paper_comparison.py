"""Rule paper_comparison: the paper's Table 1 and shuffled control next to our accuracies."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.paper import write_comparison

run_job(
    snakemake,  # noqa: F821
    lambda job: write_comparison(
        cross_evaluation_csv=job.input.table,
        cfg=job.params.comparison,
        out_csv=job.output.csv,
        out_md=job.output.markdown,
    ),
    needs_device=False,
)
