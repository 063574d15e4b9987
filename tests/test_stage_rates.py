"""Per-stage work rates of a finished run, read from its jobs' provenance, against a benchmark's
bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from saliency_fingerprints.stage_rates import bounds, collect, main, rates, render


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def primary(results: Path, name: str, architecture: str, n_train: int, epochs: int, s: float):
    write_json(
        results / "primaries" / name / "metrics.json",
        {
            "architecture": architecture,
            "n_train": n_train,
            "history": [{"epoch": e} for e in range(0 if epochs == 0 else 1, epochs + 1)],
            "provenance": {"stage": "train_primary", "wall_time_s": s},
        },
    )


def map_store(results: Path, method: str, primary_name: str, maps: int, k: int, s: float):
    prov = {
        "stage": "compute_saliency",
        "config": {"primary": primary_name},
        "n_maps": maps,
        "gradient_evaluations_per_map": k,
        "wall_time_s": s,
    }
    store = results / "saliency" / "predicted" / method / f"{primary_name}.zarr"
    values = np.zeros((maps, 3, 4, 4), dtype="float32")
    ds = xr.Dataset({"maps": (("sample", "channel", "y", "x"), values)})
    ds.attrs["provenance"] = json.dumps(prov)
    ds.to_zarr(store, zarr_format=3, consolidated=False)


def secondary(results: Path, experiment: str, replicates: list[dict], s: float):
    write_json(
        results / "experiments" / experiment / "secondaries" / "grad" / "original" / "metrics.json",
        {
            "replicates": replicates,
            "provenance": {
                "stage": "train_secondary",
                "config": {"architecture": "minicnn"},
                "wall_time_s": s,
            },
        },
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), np.zeros((5, 3, 4, 4), dtype="float32")),
            "label": ("sample", np.zeros(5, dtype="int64")),
            "split": (
                "sample",
                np.array(["train"] * 3 + ["test"] * 2, dtype=np.dtypes.StringDType()),
            ),
        }
    ).to_zarr(root / "data" / "toy.zarr", zarr_format=3, consolidated=False)
    primary(root, "cnn2-seed0", "cnn2", 100, 3, 2.0)
    primary(root, "cnn2-seed1", "cnn2", 100, 2, 3.0)  # stopped after 2 epochs
    primary(root, "miniresnet-seed0", "miniresnet", 50, 4, 10.0)
    primary(root, "cnn2-seed0-epoch0", "cnn2", 100, 0, 0.5)  # untrained: its epoch-0 record
    sanity = root / "sanity"
    primary(sanity, "cnn2-seed0-random_labels", "cnn2", 100, 1, 1.0)
    map_store(root, "grad", "cnn2-seed0", 40, 1, 0.5)
    map_store(root, "smoothgrad", "cnn2-seed0", 40, 25, 4.5)
    map_store(root, "grad", "miniresnet-seed0", 40, 1, 2.0)
    (root / "saliency" / "predicted" / "grad" / "broken.zarr").mkdir()  # no maps: skipped
    searched = {
        "n_fit": 30,
        "map_shape": [1, 4],
        "learning_rate_search": [{"epochs_run": 5}, {"epochs_run": 2}],
        "epochs_run": 5,
    }
    single = {"n_fit": 30, "map_shape": [1, 4], "epochs_run": 4}
    secondary(root, "a", [searched, single], 6.0)
    return root


def test_work_per_job(results: Path) -> None:
    jobs = {(j.stage, Path(j.path).parent.name, Path(j.path).name): j for j in collect(results)}
    assert len(jobs) == 9
    assert jobs[("train_primary", "cnn2-seed1", "metrics.json")].work == 200
    assert jobs[("train_primary", "cnn2-seed0-epoch0", "metrics.json")].work == 0
    assert jobs[("train_primary", "cnn2-seed0-random_labels", "metrics.json")].model == (
        "cnn2 3x4x4"
    )
    sg = jobs[("compute_saliency", "smoothgrad", "cnn2-seed0.zarr")]
    assert (sg.work, sg.seconds, sg.model) == (1000, 4.5, "cnn2 3x4x4")
    assert jobs[("compute_saliency", "grad", "miniresnet-seed0.zarr")].model == "miniresnet 3x4x4"
    # every learning-rate candidate's own epochs, plus the replicate without a search
    sec = jobs[("train_secondary", "original", "metrics.json")]
    assert (sec.work, sec.model) == (30 * (5 + 2) + 30 * 4, "minicnn 1x4x4")


def test_rates_against_bounds(results: Path) -> None:
    bench = {
        "gpu_training": {"cnn2 3x4x4": {"paths": {"bound": {"images_per_s": {"median": 200}}}}},
        "limit": {"cnn2 3x4x4": {"rows_per_s": {"median": 1000.0}}},
    }
    table = {r.key: r for r in rates(collect(results), bounds(bench))}
    assert list(table) == [
        ("train_primary", "cnn2 3x4x4", ""),
        ("train_primary", "miniresnet 3x4x4", ""),
        ("compute_saliency", "cnn2 3x4x4", "grad"),
        ("compute_saliency", "cnn2 3x4x4", "smoothgrad"),
        ("compute_saliency", "miniresnet 3x4x4", "grad"),
        ("train_secondary", "minicnn 1x4x4", ""),
    ]
    cnn2 = table[("train_primary", "cnn2 3x4x4", "")]
    assert (cnn2.jobs, cnn2.work, cnn2.seconds) == (4, 600, 6.5)
    assert cnn2.rate == pytest.approx(600 / 6.5) and cnn2.fraction == pytest.approx(600 / 6.5 / 200)
    # each method its own rate against the model's one bound (Grad's 40 rows in 0.5 s, SG's 1000
    # in 4.5 s: one rate for both would hide that SG ran at 0.22 of the bound, Grad at 0.08)
    grad = table[("compute_saliency", "cnn2 3x4x4", "grad")]
    sg = table[("compute_saliency", "cnn2 3x4x4", "smoothgrad")]
    assert grad.rate == pytest.approx(80) and grad.fraction == pytest.approx(0.08)
    assert sg.rate == pytest.approx(1000 / 4.5) and sg.fraction == pytest.approx(1000 / 4.5 / 1000)
    assert table[("compute_saliency", "miniresnet 3x4x4", "grad")].fraction is None  # no bound
    text = render(list(table.values()), "results", {"train_primary": 12.0}, "bench.json")
    row = "| train_primary | cnn2 3x4x4 | - | 4 | 600 training images | 6.5 s | 92 | 200 | 0.46 |"
    assert row in text
    assert "| compute_saliency | cnn2 3x4x4 | smoothgrad | 1 | 1,000 gradient rows | 4.5 s" in text
    assert "- train_primary: 67 training images/s over 12 s" in text  # (600 + 200) / 12


def test_command_line(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rates.md"
    assert main([str(results), "--markdown", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: ") and "missing" in err and "\n" not in err
    broken = results / "primaries" / "cnn2-seed0" / "metrics.json"
    write_json(broken, {"architecture": "cnn2", "provenance": {"stage": "train_primary"}})
    assert main([str(results)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ERROR: {broken}: not a finished job's record") and "n_train" in err


def test_a_workflow_run_is_covered(tiny_run: Path) -> None:
    results = tiny_run / "results"
    jobs = collect(results)
    counts = {stage: sum(j.stage == stage for j in jobs) for stage in {j.stage for j in jobs}}
    assert counts == {
        "train_primary": len(list(results.glob("**/primaries/*/metrics.json"))),
        "compute_saliency": len(list((results / "saliency").glob("*/*/*.zarr"))),
        "train_secondary": len(list(results.glob("experiments/*/secondaries/*/*/metrics.json"))),
    }
    assert all(j.seconds > 0 and "?" not in j.model for j in jobs)
    assert all(j.work > 0 for j in jobs if not j.path.endswith("epoch0/metrics.json"))
