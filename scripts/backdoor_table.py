"""Rule backdoor_table: trigger localisation of the input-agnostic maps per primary, kind and
class, with the attack success rates and clean accuracies beside them."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.backdoor_tables import backdoor_table
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.store import store_root


def main(job):
    cfg = job.params.backdoor
    backdoor_table(
        stores=[store_root(p) for p in job.input.maps],
        metrics=list(job.input.metrics),
        trigger_cfg=cfg["trigger"],
        target_class=int(cfg["target_class"]),
        poison_fraction=float(cfg["poison_fraction"]),
        out_csv=job.output.csv,
        out_md=job.output.markdown,
    )


run_job(snakemake, main, needs_device=False)  # noqa: F821
