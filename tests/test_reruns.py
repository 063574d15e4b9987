"""Exact incremental reruns: after a config edit, a dry run plans exactly the jobs the edit affects.

The tiny workflow (session fixture ``tiny_run``) is copied, a second experiment that reuses its
primaries is added and run for real, and then every edit below is checked with a dry run against
the exact job counts it must plan: never more, never less. Snakemake's default rerun triggers
(``mtime params input software-env code``) do the work; these tests pin down that every rule's
``params`` hold exactly what its output depends on (see the README, "Changing the config").
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
from conftest import job_counts, planned_jobs, run_workflow, tiny_config

SECOND = "grad_only"


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a finished workflow directory (outputs, timestamps and Snakemake's metadata)."""
    shutil.copytree(source, target, symlinks=True)
    return target


def two_experiments() -> dict:
    """The tiny config plus a second experiment on the same primaries (in another order)."""
    cfg = tiny_config()
    cfg["experiments"][SECOND] = {
        "description": "Grad maps only, primaries listed in the other order.",
        "primaries": [{"architecture": "cnn2", "seeds": [1, 0]}],
        "methods": ["grad"],
    }
    return cfg


@pytest.fixture(scope="module")
def extended(tiny_run, tmp_path_factory):
    """(workdir, plan): a copy of tiny_run, the dry-run plan for adding the second experiment,
    and that experiment then run for real."""
    workdir = copy_run(tiny_run, tmp_path_factory.mktemp("reruns") / "run")
    cfg = two_experiments()
    plan = planned_jobs(workdir, cfg)
    run_workflow(workdir, cfg)
    return workdir, plan


def test_copied_run_has_nothing_to_do(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "run")
    assert planned_jobs(workdir, tiny_config()) == {}


def test_new_experiment_reuses_primaries_and_maps(extended, tiny_run):
    workdir, plan = extended
    # No train_primary, no compute_saliency: the new experiment's grad secondary, its
    # cross-evaluation, heatmap and map grid, and the combined tables.
    assert plan == {
        "train_secondary": 1,
        "cross_evaluate": 1,
        "combine_tables": 1,
        "plot_heatmap": 1,
        "plot_map_grid": 1,
        "all": 1,
    }
    # Shared by identity: the run left the primaries and map stores exactly as they were.
    for pattern in ("results/primaries/*/*", "results/saliency/*/*/*.zarr"):
        before = sorted(p.relative_to(tiny_run) for p in tiny_run.glob(pattern))
        after = sorted(p.relative_to(workdir) for p in workdir.glob(pattern))
        assert before == after and before
        for rel in before:
            assert (workdir / rel).stat().st_mtime == (tiny_run / rel).stat().st_mtime, rel
    assert not list((workdir / "results/experiments" / SECOND).rglob("*.zarr"))
    assert planned_jobs(workdir, two_experiments()) == {}


def _edit(path: str, value):
    """An edit of the config at a dotted path (``a.b.c``), as a function of a config."""

    def apply(cfg: dict) -> None:
        *parents, key = path.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[key] = value

    return apply


def _add_seed(cfg: dict) -> None:
    cfg["experiments"]["two_cnn2"]["primaries"][0]["seeds"].append(2)


def _override_second_secondary(cfg: dict) -> None:
    cfg["experiments"][SECOND]["secondary"] = {"epochs": 5}


def _second_uses_smoothgrad(cfg: dict) -> None:
    cfg["experiments"][SECOND]["methods"].append("smoothgrad")


def _second_gets_a_variant(cfg: dict) -> None:
    cfg["experiments"][SECOND]["variants"] = ["original", "shuffled_fixed"]


# The sanity checks' summary table and figures (one checked primary, cnn2-seed0).
SANITY_SUMMARY = {"combine_sanity_tables": 1, "plot_sanity_curves": 1, "plot_sanity_maps": 1}
ALL_SANITY_CHECKS = {"sanity_check": 3, **SANITY_SUMMARY}

# The base: two_cnn2 (cnn2 seeds 0, 1; 2 replicates on disjoint primary sets, so cnn2 seeds 2, 3
# too; grad, smoothgrad, integrated_gradients; variants original and shuffled_per_map),
# two_cnn2_true_class (cnn2 0, 1; grad; maps of the true class; 1 replicate) and grad_only (the
# same primaries in the other order; grad; original; 2 replicates on one primary set).
EVERYTHING_AFTER_PRIMARIES = {
    "compute_saliency": 14,  # 4 primaries x 3 methods (predicted class) + 2 x grad (true class)
    "train_secondary": 8,  # one job per (experiment, method, variant), every replicate in it
    "cross_evaluate": 4,
    "combine_tables": 1,
    "plot_heatmap": 4,
    "plot_map_grid": 3,
    "map_diagnostics": 1,
    "all": 1,
}

EDITS = {
    "no-edit": (lambda cfg: None, {}),
    "description": (_edit("experiments.two_cnn2.description", "reworded"), {}),
    "compute-device": (_edit("compute.device", "cpu"), {}),
    "smoothgrad-noise": (
        _edit("methods.smoothgrad.noise_level", 0.2),
        {
            "compute_saliency": 4,  # SmoothGrad maps of cnn2 seeds 0-3
            "train_secondary": 2,
            "cross_evaluate": 2,
            "combine_tables": 1,
            "plot_heatmap": 2,
            "plot_map_grid": 1,
            "map_diagnostics": 1,
            "sanity_check": 1,  # SmoothGrad's sanity check of cnn2-seed0, not Grad's or IG's
            **SANITY_SUMMARY,
            "all": 1,
        },
    ),
    # seeds [0, 1, 2] make the primary sets {0, 1, 2} and {3, 4, 5}: cnn2 seeds 4 and 5 are new
    "one-more-seed": (
        _add_seed,
        {
            "train_primary": 2,
            "compute_saliency": 6,
            "train_secondary": 6,
            "cross_evaluate": 2,
            "combine_tables": 1,
            "plot_heatmap": 2,
            "plot_map_grid": 1,
            "map_diagnostics": 1,
            "all": 1,
        },
    ),
    # a third replicate: two_cnn2 gets the primary set {4, 5}, grad_only a third seed on the same
    # primaries; the true-class experiment keeps its own n (1)
    "one-more-replicate": (
        _edit("replicates.n", 3),
        {
            "train_primary": 2,
            "compute_saliency": 6,
            "train_secondary": 7,
            "cross_evaluate": 3,
            "combine_tables": 1,
            "plot_heatmap": 3,
            "map_diagnostics": 1,
            "all": 1,
        },
    ),
    # the true-class experiment explains the predicted class instead: the maps two_cnn2 made
    # already are reused; the true-class stores leave the diagnostics table
    "experiment-target": (
        _edit("experiments.two_cnn2_true_class.target", "predicted"),
        {
            "train_secondary": 1,
            "cross_evaluate": 1,
            "combine_tables": 1,
            "plot_heatmap": 1,
            "plot_map_grid": 1,
            "map_diagnostics": 1,
            "all": 1,
        },
    ),
    "secondary-epochs": (
        _edit("secondary.epochs", 5),
        {
            "train_secondary": 8,
            "cross_evaluate": 4,
            "combine_tables": 1,
            "plot_heatmap": 4,
            "all": 1,
        },
    ),
    # a list of one learning rate is that rate: nothing reruns
    "learning-rate-list-of-one": (_edit("secondary.learning_rate", [3e-4]), {}),
    "learning-rate-candidates": (
        _edit("secondary.learning_rate", [1e-3, 3e-4]),
        {
            "train_secondary": 8,
            "cross_evaluate": 4,
            "combine_tables": 1,
            "plot_heatmap": 4,
            "all": 1,
        },
    ),
    "one-experiment-secondary": (
        _override_second_secondary,
        {
            "train_secondary": 1,
            "cross_evaluate": 1,
            "combine_tables": 1,
            "plot_heatmap": 1,
            "all": 1,
        },
    ),
    "shuffle-seed": (
        _edit("secondary.shuffle_seed", 1),
        {
            "train_secondary": 3,  # two_cnn2's shuffled_per_map secondaries
            "cross_evaluate": 1,
            "combine_tables": 1,
            "plot_heatmap": 1,
            "plot_map_grid": 1,
            "all": 1,
        },
    ),
    # two_cnn2 already made SmoothGrad maps of the same primaries: reused, not recomputed; the
    # grad secondary is not retrained (it never sees SmoothGrad maps), the cross-evaluation is.
    "method-added-to-experiment": (
        _second_uses_smoothgrad,
        {
            "train_secondary": 1,
            "cross_evaluate": 1,
            "combine_tables": 1,
            "plot_heatmap": 1,
            "plot_map_grid": 1,
            "all": 1,
        },
    ),
    "variant-added-to-experiment": (
        _second_gets_a_variant,
        {
            "train_secondary": 1,
            "cross_evaluate": 1,
            "combine_tables": 1,
            "plot_heatmap": 1,
            "plot_map_grid": 1,
            "all": 1,
        },
    ),
    "heatmap-cmap": (_edit("plots.cmap", "plasma"), {"plot_heatmap": 4, "all": 1}),
    "map-cmap": (
        _edit("plots.map_cmap", "gray"),
        {"plot_map_grid": 3, "plot_sanity_maps": 1, "all": 1},
    ),
    "dpi": (
        _edit("plots.dpi", 72),
        {
            "plot_heatmap": 4,
            "plot_map_grid": 3,
            "plot_sanity_curves": 1,
            "plot_sanity_maps": 1,
            "all": 1,
        },
    ),
    "saliency-images": (_edit("saliency.max_images", 200), EVERYTHING_AFTER_PRIMARIES),
    # the random-label copy keeps its own epochs (sanity_checks.random_labels.epochs: 2)
    "primary-epochs": (
        _edit("primary_training.epochs", 4),
        {"train_primary": 4, **EVERYTHING_AFTER_PRIMARIES, **ALL_SANITY_CHECKS},
    ),
    "sanity-input-shift": (
        _edit("sanity_checks.input_shift", 0.5),
        {**ALL_SANITY_CHECKS, "all": 1},
    ),
    "random-label-epochs": (
        _edit("sanity_checks.random_labels.epochs", 3),
        {"train_random_label_primary": 1, **ALL_SANITY_CHECKS, "all": 1},
    ),
}


# The edits (and the narrowed plot and shuffle-seed params) run in CI; the rest (a dry
# run each) are marked slow.
SLOW_EDITS = {
    "description",
    "compute-device",
    "one-experiment-secondary",
    "dpi",
    "saliency-images",
    "primary-epochs",
    "variant-added-to-experiment",
    "sanity-input-shift",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EDITS else n for n in EDITS],
)
def test_edit_plans_exactly_the_affected_jobs(extended, name):
    workdir, _ = extended
    edit, expected = EDITS[name]
    cfg = copy.deepcopy(two_experiments())
    edit(cfg)
    assert planned_jobs(workdir, cfg) == expected


def test_archive_is_known_by_its_checksum_not_its_mtime(tmp_path):
    """A re-staged archive (same bytes, new mtime) reruns nothing; a new checksum reruns the
    preparation. The archive is an ``ancient`` input; its sha256 is in the job's params."""
    from test_datasets import make_imagefolder, make_tar, sha256

    archive = make_tar(make_imagefolder(tmp_path / "tree"), tmp_path / "toy.tar.gz", "toy")
    cfg = tiny_config(sanity=False)
    cfg["dataset"] = {
        "name": "toy",
        "source": "archive",
        "url": str(archive),
        "sha256": sha256(archive),
        "download_dir": str(tmp_path / "downloads"),
    }
    workdir = tmp_path / "run"
    # Snakemake compares the contents of inputs up to --max-checksum-file-size (1 MB) before
    # their mtimes; real archives are larger, as this toy one is made to look.
    until = ("--until", "prepare_dataset", "--max-checksum-file-size", "1")
    run_workflow(workdir, cfg, *until)

    def plan(config: dict) -> dict[str, int]:
        return job_counts(run_workflow(workdir, config, "-n", "--quiet", "rules", *until))

    assert plan(cfg) == {}
    later = archive.stat().st_mtime + 3600
    os.utime(archive, (later, later))  # copied or restored: same bytes, a newer mtime
    assert plan(cfg) == {}
    shutil.copy(
        make_tar(make_imagefolder(tmp_path / "tree", n_train=5), tmp_path / "v2.tgz"), archive
    )
    assert plan({**cfg, "dataset": {**cfg["dataset"], "sha256": sha256(archive)}}) == {
        "prepare_dataset": 1
    }
