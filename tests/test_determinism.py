"""Determinism: the same config on the CPU gives bitwise-identical weights, maps and tables.

Two independent runs of the tiny workflow (the session's ``tiny_run`` and its SLURM run, or one
more here) are compared byte for byte where the file holds only data (safetensors weights, CSV
tables, markdown) and value for value where it also holds provenance (Zarr stores: their arrays
and coordinates; the provenance attribute carries timestamps and wall times by design).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import run_workflow, tiny_config
from slurm_cluster import missing_slurm

# ``runs`` asks for these where it can: conftest starts them in the background
REQUESTS_RUNS = ("tiny_run", "slurm_run")


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> tuple[Path, Path]:
    """Two independent runs of the same config on the CPU: the session's ``tiny_run`` and the
    session's run of it on a local SLURM cluster (``slurm_run``: other processes, another
    scheduler, one job failed and retried), or, without SLURM, one more local run; where CUDA
    is visible, two fresh local runs with ``compute.device: cpu`` instead."""
    cfg = tiny_config()
    if torch.cuda.is_available():
        cfg["compute"] = {"device": "cpu"}
        first = tmp_path_factory.mktemp("determinism_a")
        run_workflow(first, cfg)
    else:
        first = request.getfixturevalue("tiny_run")
        if missing_slurm() is None:
            run = request.getfixturevalue("slurm_run")
            assert run.proc.returncode == 0, run.proc.stderr[-8000:]
            return first, run.workdir
    second = tmp_path_factory.mktemp("determinism")
    run_workflow(second, cfg)
    return first, second


def relative(root: Path, pattern: str) -> list[Path]:
    found = sorted(p.relative_to(root) for p in root.glob(pattern))
    assert found, f"no {pattern} under {root}"
    return found


def open_zarr(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False, zarr_format=3)


def test_runs_produced_the_same_files(runs):
    tiny_run, second_run = runs

    def outputs(root: Path) -> list[Path]:
        return sorted(
            p.relative_to(root)
            for p in (root / "results").rglob("*")
            if p.is_file() and "logs" not in p.parts
        )

    assert outputs(tiny_run) == outputs(second_run)


@pytest.mark.parametrize(
    "pattern",
    [
        "results/primaries/*/model.safetensors",
        "results/experiments/*/secondaries/*/*/model.safetensors",
        "results/sanity/primaries/*/model.safetensors",
    ],
    ids=["primaries", "secondaries", "random-label-primaries"],
)
def test_weights_are_bitwise_identical(runs, pattern):
    tiny_run, second_run = runs
    for rel in relative(tiny_run, pattern):
        assert (tiny_run / rel).read_bytes() == (second_run / rel).read_bytes(), rel


def test_training_histories_are_identical(runs):
    tiny_run, second_run = runs
    for rel in relative(tiny_run, "results/**/metrics.json"):
        a, b = (json.loads((root / rel).read_text()) for root in runs)
        a.pop("provenance")
        b.pop("provenance")
        assert a == b, rel  # histories (every replicate's for secondaries), accuracies, counts


def assert_same_data(a: xr.Dataset, b: xr.Dataset, where) -> None:
    assert set(a.variables) == set(b.variables), where
    for name in a.variables:
        va, vb = a[name].values, b[name].values
        assert va.dtype == vb.dtype, (where, name)
        # Bitwise: compare the raw bytes, so that even NaN payloads or -0.0 would count.
        assert np.ascontiguousarray(va).tobytes() == np.ascontiguousarray(vb).tobytes(), (
            where,
            name,
        )


def test_dataset_store_is_identical(runs):
    tiny_run, second_run = runs
    rel = Path("results/data/digits.zarr")
    assert_same_data(open_zarr(tiny_run / rel), open_zarr(second_run / rel), rel)


def test_maps_are_bitwise_identical(runs):
    tiny_run, second_run = runs
    stores = relative(tiny_run, "results/saliency/*/*/*.zarr")
    assert len(stores) == 14  # 3 methods x 4 primaries + grad x 2 (true class)
    for rel in stores:
        a, b = open_zarr(tiny_run / rel), open_zarr(second_run / rel)
        assert_same_data(a, b, rel)
        assert np.isfinite(a["maps"].values).all() and np.any(a["maps"].values), rel
        # Attributes other than the provenance (timestamps, wall time) are identical too.
        strip = {k: v for k, v in a.attrs.items() if k != "provenance"}
        assert strip == {k: v for k, v in b.attrs.items() if k != "provenance"}, rel


@pytest.mark.parametrize(
    "pattern",
    [
        "results/tables/cross_evaluation.csv",
        "results/tables/cross_evaluation.md",
        "results/experiments/*/cross_evaluation/*.csv",
        "results/tables/sanity_checks.csv",
        "results/sanity/*/*.csv",
    ],
    ids=["combined-csv", "combined-md", "per-experiment", "sanity-summary", "sanity-per-image"],
)
def test_tables_are_bitwise_identical(runs, pattern):
    tiny_run, second_run = runs
    for rel in relative(tiny_run, pattern):
        assert (tiny_run / rel).read_bytes() == (second_run / rel).read_bytes(), rel


def test_provenance_differs_only_where_it_should(runs):
    """The sidecars of the two runs agree on everything but timing (and the host is the same)."""
    tiny_run, second_run = runs
    volatile = {"wall_time_s", "finished_at"}
    for rel in relative(tiny_run, "results/**/*.provenance.json"):
        a, b = (json.loads((root / rel).read_text()) for root in runs)
        assert {k: v for k, v in a.items() if k not in volatile} == {
            k: v for k, v in b.items() if k not in volatile
        }, rel


def test_safetensors_files_do_not_depend_on_the_process():
    """safetensors writes its metadata in a random order (a Rust HashMap); save_model sorts it,
    so the same weights always give the same bytes."""
    from safetensors.torch import load, save

    from saliency_fingerprints.training import canonical_safetensors

    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    meta = {k: str(i) for i, k in enumerate(["architecture", "in_channels", "size", "classes"])}
    files = {canonical_safetensors(save(state, metadata=meta)) for _ in range(20)}
    assert len(files) == 1
    (data,) = files
    assert data.index(b'"architecture":"0","classes":"3","in_channels":"1","size":"2"') > 0
    loaded = load(data)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_determinism_flags_without_loading_the_compiler():
    """set_determinism turns on torch's deterministic algorithms (warn only) without importing
    torch._inductor / TorchDynamo, which the public call loads (~2.7 s of every job's start)."""
    script = (
        "import sys, torch\n"
        "from saliency_fingerprints.runtime import set_determinism\n"
        "set_determinism(0, 1)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "compiler = ('torch._inductor', 'torch._dynamo')\n"
        "print(sorted(m for m in sys.modules if m.startswith(compiler)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
