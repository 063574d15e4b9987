"""Rule plot_backdoor: the trigger, a stamped image and the mean input-agnostic map per class of
each clean and backdoored primary (Akhtar & Jalwana 2023, Fig. 4, for ours)."""

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_backdoor
from saliency_fingerprints.store import store_root


def main(job):
    cfg, plots = job.params.backdoor, job.params.plots
    plot_backdoor(
        stores=[store_root(p) for p in job.input.maps],
        dataset=store_root(job.input.dataset),
        metrics=list(job.input.metrics),
        trigger_cfg=cfg["trigger"],
        target_class=int(cfg["target_class"]),
        out=job.output.png,
        cmap=plots["map_cmap"],
        dpi=plots["dpi"],
    )


run_job(snakemake, main, needs_device=False)  # noqa: F821
