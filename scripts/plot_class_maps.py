"""Rule plot_class_maps: input-agnostic class maps per primary (Akhtar & Jalwana 2023, Fig. 3)."""

import json

import _bootstrap  # noqa: F401  (makes the library importable in conda envs)

from saliency_fingerprints.datasets import open_dataset
from saliency_fingerprints.jobs import run_job
from saliency_fingerprints.plots import plot_class_maps
from saliency_fingerprints.store import store_root


def main(job):
    stores = dict(zip(job.params.primaries, map(store_root, job.input.maps), strict=True))
    dataset, _ = open_dataset(store_root(job.input.dataset))
    classes = json.loads(dataset.attrs.get("classes", "null"))
    plots = job.params.plots
    plot_class_maps(
        stores=stores,
        out=job.output.png,
        class_names=classes,
        cmap=plots["map_cmap"],
        dpi=plots["dpi"],
        title=f"{job.wildcards.experiment}: input-agnostic class maps (IA) per primary; "
        "below each: success on the train split (draws of the class)",
    )


run_job(snakemake, main, needs_device=False)  # noqa: F821
