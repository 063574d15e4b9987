"""Provenance: every store and table says what made it - the config subset it depends on, the
code version, package versions, device and wall time.

Where it lives: Zarr stores (dataset, maps) in their ``provenance`` attribute; primaries and
secondaries in their ``metrics.json`` (beside ``model.safetensors``, whose bytes stay
reproducible); tables in a ``.provenance.json`` sidecar (``x.csv`` and ``x.md`` share one).
"""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr
from conftest import tiny_config

from saliency_fingerprints.configuration import primary_name
from saliency_fingerprints.provenance import PACKAGES
from saliency_fingerprints.tables import combine_tables, provenance_path

REQUIRED = {
    "stage",
    "config",
    "code_version",
    "packages",
    "cpu",
    "device",
    "wall_time_s",
    "finished_at",
}


TORCH_STAGES = {"compute_saliency", "train_primary", "train_secondary", "cross_evaluate"}
KERNELS = {"DEFAULT", "VSX", "Z VECTOR", "AVX2", "AVX512", "SVE256"}  # get_cpu_capability()


def check_record(record: dict, stage: str) -> dict:
    """The common fields are there and plausible; returns the record's config subset."""
    assert REQUIRED <= set(record), sorted(REQUIRED - set(record))
    assert record["stage"] == stage
    assert record["code_version"].startswith("saliency-fingerprints ")
    assert set(record["packages"]) == set(PACKAGES)
    assert record["packages"]["torch"] != "not installed"
    assert record["device"].startswith(("cpu", "cuda"))
    assert record["cpu"]["model"]
    if stage in TORCH_STAGES:  # the jobs that compute with torch name its CPU kernels
        assert record["cpu"]["kernels"] in KERNELS
    assert record["cpu"].get("kernels", "DEFAULT") in KERNELS
    assert isinstance(record["wall_time_s"], float | int) and record["wall_time_s"] >= 0
    assert isinstance(record["config"], dict) and record["config"]
    return record["config"]


def store_provenance(path: Path) -> dict:
    ds = xr.open_zarr(path, consolidated=False, zarr_format=3)
    assert "provenance" in ds.attrs, path
    return json.loads(ds.attrs["provenance"])


def test_dataset_store(tiny_run):
    config = check_record(
        store_provenance(tiny_run / "results/data/digits.zarr"), "prepare_dataset"
    )
    expected = tiny_config()["dataset"]
    assert {k: config[k] for k in expected} == expected


def test_map_stores(tiny_run):
    cfg = tiny_config()
    stores = sorted((tiny_run / "results/saliency").glob("*/*/*.zarr"))
    assert len(stores) == 14  # 4 cnn2 x 3 methods (predicted class) + 2 x grad (true class)
    for store in stores:
        method, primary = store.parent.name, store.name.removesuffix(".zarr")
        target = store.parent.parent.name
        record = store_provenance(store)
        config = check_record(record, "compute_saliency")
        assert config["method"] == method and config["primary"] == primary
        assert config["method_params"] == cfg["methods"][method]
        for key, value in {**cfg["saliency"], "target": target}.items():
            assert config[key] == value, (store, key)
        # Only what the maps depend on: no secondary or plotting settings.
        assert not {"secondary", "plots", "experiments"} & set(config)
        assert record["n_maps"] == cfg["saliency"]["max_images"]


def test_primaries(tiny_run):
    training = tiny_config()["primary_training"]
    for metrics in sorted((tiny_run / "results/primaries").glob("*/metrics.json")):
        record = json.loads(metrics.read_text())["provenance"]
        config = check_record(record, "train_primary")
        assert primary_name(config["architecture"], config["seed"]) == metrics.parent.name
        assert {k: config[k] for k in training} == training


def test_secondaries(tiny_run):
    found = sorted((tiny_run / "results/experiments").glob("*/secondaries/*/*/metrics.json"))
    assert len(found) == 7  # two_cnn2: 3 methods x 2 variants; two_cnn2_true_class: grad
    secondary = tiny_config()["secondary"]
    for metrics in found:
        config = check_record(json.loads(metrics.read_text())["provenance"], "train_secondary")
        assert config["method"] == metrics.parent.parent.name
        assert config["variant"] == metrics.parent.name
        for key in ("architecture", "epochs", "seed", "test_fraction", "preprocess"):
            assert config[key] == secondary[key], (metrics, key)
        if config["experiment"] == "two_cnn2":  # 2 replicates on disjoint primary sets
            assert config["replicates"] == [
                {"replicate": 0, "seed": 0, "primaries": ["cnn2-seed0", "cnn2-seed1"]},
                {"replicate": 1, "seed": 1, "primaries": ["cnn2-seed2", "cnn2-seed3"]},
            ]


def test_cross_evaluation_tables(tiny_run):
    tables = sorted((tiny_run / "results/experiments").glob("*/cross_evaluation/*.csv"))
    assert [f"{t.parent.parent.name}/{t.stem}" for t in tables] == [
        "two_cnn2/original",
        "two_cnn2/shuffled_per_map",
        "two_cnn2_true_class/original",
    ]
    for table in tables:
        config = check_record(json.loads(provenance_path(table).read_text()), "cross_evaluate")
        assert config["experiment"] == table.parent.parent.name and config["variant"] == table.stem


def test_combined_table(tiny_run):
    tables = tiny_run / "results/tables"
    sidecar = provenance_path(tables / "cross_evaluation.csv")
    assert sidecar == provenance_path(tables / "cross_evaluation.md")
    record = json.loads(sidecar.read_text())
    config = check_record(record, "combine_tables")
    parts = sorted(tiny_run.glob("results/experiments/*/cross_evaluation/*.csv"))
    assert sorted(config["parts"]) == [str(p.relative_to(tiny_run)) for p in parts]
    for part in parts:
        part_config = json.loads(provenance_path(part).read_text())["config"]
        assert config["parts"][str(part.relative_to(tiny_run))] == part_config
    assert record["n_rows"] == 19  # cells: 2 variants x 3 x 3 methods + 1 (true class, grad)


def test_combined_table_provenance_is_written_first(tmp_path, monkeypatch):
    """A combined CSV never exists without its sidecar: the sidecar is written first."""
    import pandas as pd

    from saliency_fingerprints import tables as table_module

    row = {
        "experiment": "e", "variant": "original", "replicate": 0, "seed": 0, "primaries": "a,b",
        "train_method": "grad", "test_method": "grad", "accuracy": 0.9, "n_test": 100,
        "chance": 0.5, "n_primaries": 2, "class_cue": 0.6, "only_secondary": 35, "only_cue": 5,
        "same_class_accuracy": 0.88, "n_same_class": 50, "same_class_fraction": 0.5,
        "p_value": 1e-12,
    }  # fmt: skip
    part = tmp_path / "part.csv"
    pd.DataFrame([row], columns=table_module.REPLICATE_COLUMNS).to_csv(part, index=False)
    tables = tmp_path / "tables"
    written = []
    real = table_module.atomic_output

    def spy(path):
        written.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(table_module, "atomic_output", spy)
    combine_tables(
        parts=[part], out_csv=tables / "cross_evaluation.csv", out_md=tables / "cross_evaluation.md"
    )
    assert written == [
        "cross_evaluation.provenance.json",
        "cross_evaluation.csv",
        "cross_evaluation.md",
    ]
    record = json.loads((tables / "cross_evaluation.provenance.json").read_text())
    check_record(record, "combine_tables")
    assert record["config"] == {"parts": {str(part): None}}  # the part had no sidecar
    assert record["n_rows"] == 1
