"""Map diagnostics: MP and IG stores carry per-map score / area and completeness terms, which
survive a resume; the per-store diagnostics table is exact on constructed maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import with_defaults
from torch import nn

from saliency_fingerprints.diagnostics import (
    COLUMNS,
    completeness_ratio,
    map_spans,
    store_diagnostics,
    write_diagnostics,
)
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import (
    Gradient,
    IntegratedGradients,
    MeaningfulPerturbation,
    build_method,
    compute_saliency_maps,
    open_maps,
)
from saliency_fingerprints.saliency import job as saliency_job
from saliency_fingerprints.store import ChunkedMapWriter, write_dataset
from saliency_fingerprints.tables import provenance_path
from saliency_fingerprints.training import load_model, save_model

CPU = torch.device("cpu")
N_IMAGES = 40
SALIENCY = with_defaults("saliency", images="all", target="predicted", pass_size=64, chunk_size=16)
MP_PARAMS = {"iterations": 25, "mask_size": 4, "noise_std": 0.05, "seed": 1}
IG_PARAMS = {"n_steps": 6, "baseline": "zero", "rule": "pair"}


@pytest.fixture(scope="module")
def primary(tmp_path_factory) -> tuple[Path, Path, xr.Dataset]:
    """A small 3-channel dataset store (40 images of 8x8) and an untrained cnn2's weights."""
    root = tmp_path_factory.mktemp("diagnostics")
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), rng.random((N_IMAGES, 3, 8, 8), "float32"))},
        coords={
            "sample": np.arange(N_IMAGES, dtype=np.int64),
            "label": ("sample", rng.integers(0, 10, N_IMAGES).astype(np.int64)),
            "split": ("sample", np.where(np.arange(N_IMAGES) % 4 == 0, "test", "train")),
        },
        attrs={"classes": json.dumps([str(i) for i in range(10)]), "provenance": "test"},
    )
    dataset = root / "data.zarr"
    write_dataset(ds, dataset, chunks={"image": 64})
    torch.manual_seed(0)
    weights = root / "cnn2.safetensors"
    save_model(build_model("cnn2", 3, 8, 10), weights, "cnn2", 3, 8, 10)
    return dataset, weights, ds


def compute(primary, out: Path, method: str, params: dict) -> xr.Dataset:
    dataset, weights, _ = primary
    compute_saliency_maps(
        dataset_path=dataset,
        weights_path=weights,
        out=out,
        method=method,
        method_params=params,
        cfg=SALIENCY,
        primary="p",
        device=CPU,
        threads=1,
    )
    return open_maps(out)


def frozen_model(weights: Path) -> nn.Module:
    model = load_model(weights)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# -- Meaningful Perturbation: score and area per map ------------------------------------------


def test_mp_store_holds_final_score_and_mask_area_per_map(primary, tmp_path):
    _, weights, source = primary
    ds = compute(primary, tmp_path / "mp.zarr", "meaningful_perturbation", MP_PARAMS)
    for name in ("mp_score", "mask_area"):
        assert ds[name].dims == ("sample",) and ds[name].shape == (N_IMAGES,)
        assert name in ds.data_vars and ds[name].attrs["description"]
        assert np.isfinite(ds[name].values).all()
    assert set(json.loads(ds.attrs["map_variables"])) == {"mp_score", "mask_area"}
    maps = ds["maps"].values
    area = ds["mask_area"].values
    # the deleted fraction of the image: the mean of the map (1 - up(mask), equal per channel)
    assert np.allclose(area, maps.mean(axis=(1, 2, 3)), atol=1e-6)
    assert (area >= 0).all() and (area <= 1).all() and area.max() > 0

    # the score is the optimisation's objective on the image under the final mask, without
    # noise: recomputed here from the engine's own masks
    model = frozen_model(weights)
    x = torch.from_numpy(source["image"].values)
    targets = torch.from_numpy(ds["target"].values)
    engine = MeaningfulPerturbation(model, pass_size=64, **MP_PARAMS)
    masks = engine.optimise_masks(x, targets, list(range(N_IMAGES)))
    with torch.no_grad():
        expected = engine.target_scores(engine.perturb(x, masks), targets).numpy()
        original = engine.target_scores(x, targets).numpy()
    score = ds["mp_score"].values
    assert np.allclose(score, expected, rtol=1e-5, atol=1e-6)
    assert (score >= 0).all() and (score <= 1).all()  # softmax probabilities
    assert score.mean() < original.mean()  # the deletion lowered the target's probability


def test_mp_score_follows_the_configured_score():
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 4).eval()
    x = torch.rand(5, 1, 8, 8)
    targets = torch.tensor([0, 1, 2, 3, 0])
    params = {"iterations": 5, "mask_size": 4, "noise_std": 0.0}
    values = {}
    for score in ("softmax", "logit"):
        engine = build_method("meaningful_perturbation", model, {**params, "score": score}, 64)
        maps = engine.attribute(x, targets, range(5))
        values[score] = engine.map_variable_values(x, targets, maps)
        deleted = maps[:, :1]
        perturbed = x * (1 - deleted) + engine.blurred(x) * deleted
        with torch.no_grad():
            logits = model(perturbed).gather(1, targets[:, None]).squeeze(1)
        want = logits if score == "logit" else torch.softmax(model(perturbed), 1)[range(5), targets]
        assert torch.allclose(values[score]["mp_score"], want, atol=1e-6)
        assert values[score]["mask_area"].shape == (5,)


# -- Integrated Gradients: completeness --------------------------------------------------------


def smooth_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).double()


def completeness(engine: IntegratedGradients, x, targets) -> torch.Tensor:
    values = engine.map_variable_values(x, targets, engine.attribute(x, targets))
    return values["ig_sum"] / values["ig_delta"]


def test_ig_completeness_is_one_with_many_steps_and_pair_misses_its_end_point_term():
    model = smooth_model()
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, targets[:, None]).squeeze(1)
    engine = IntegratedGradients(model, n_steps=1000, rule="pair")
    assert torch.allclose(engine.map_variable_values(x, targets, x)["ig_delta"], delta)
    ratio = completeness(engine, x, targets)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=2e-3)

    # with n steps, pair = T + ((g(0) + g(1)) / 2 - T) / n, T the trapezoid rule on its points
    n = 5
    pair = IntegratedGradients(model, n_steps=n, rule="pair").attribute(x, targets)
    trapezoid = IntegratedGradients(model, n_steps=n, rule="riemann_trapezoid").attribute(
        x, targets
    )
    g0 = (Gradient(model).attribute(torch.zeros_like(x), targets) * x).flatten(1).sum(1)
    g1 = (Gradient(model).attribute(x, targets) * x).flatten(1).sum(1)
    t = trapezoid.flatten(1).sum(1)
    assert torch.allclose(pair.flatten(1).sum(1), t + ((g0 + g1) / 2 - t) / n, atol=1e-12)
    few = completeness(IntegratedGradients(model, n_steps=n, rule="pair"), x, targets)
    assert not torch.allclose(few, torch.ones_like(few), atol=1e-3)  # a visible gap at 5 steps


@pytest.mark.parametrize("n_steps", [10, 25])
def test_pair_rule_recovers_n_minus_1_over_n_on_a_relu_net_at_the_zero_baseline(n_steps):
    """Zero biases, zero baseline: the gradient at the baseline is 0 and constant beyond it, so
    pair's first point adds nothing: 90% at 10 steps, 96% at 25 (the review's figures)."""
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 10).double().eval()  # Glorot weights, zero biases
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        targets = model(x).argmax(1)
    ratio = completeness(IntegratedGradients(model, n_steps=n_steps, rule="pair"), x, targets)
    assert torch.allclose(ratio, torch.full_like(ratio, (n_steps - 1) / n_steps), atol=1e-9)


def test_ig_store_records_its_completeness_terms(primary, tmp_path):
    _, weights, source = primary
    ds = compute(primary, tmp_path / "ig.zarr", "integrated_gradients", IG_PARAMS)
    for name in ("ig_sum", "ig_delta"):
        assert ds[name].dims == ("sample",) and ds[name].shape == (N_IMAGES,)
        assert np.isfinite(ds[name].values).all()
    assert "completeness" in ds["ig_sum"].attrs["description"]
    assert np.allclose(ds["ig_sum"].values, ds["maps"].values.sum(axis=(1, 2, 3)), rtol=1e-4)
    model = frozen_model(weights)
    x = torch.from_numpy(source["image"].values)
    targets = torch.from_numpy(ds["target"].values)[:, None]
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, targets).squeeze(1)
    assert np.allclose(ds["ig_delta"].values, delta.numpy(), rtol=1e-5, atol=1e-6)
    row = store_diagnostics(tmp_path / "ig.zarr")
    ratio = ds["ig_sum"].values / ds["ig_delta"].values
    assert row["completeness_median"] == pytest.approx(np.median(ratio))


def test_methods_without_diagnostics_store_only_their_maps(primary, tmp_path):
    ds = compute(primary, tmp_path / "grad.zarr", "grad", {})
    assert list(ds.data_vars) == ["maps"] and "map_variables" not in ds.attrs


# -- resume ------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_resumed_mp_store_holds_every_maps_score_and_area(primary, tmp_path, monkeypatch):
    reference = compute(primary, tmp_path / "reference.zarr", "meaningful_perturbation", MP_PARAMS)
    real = saliency_job.build_method
    calls: list[int] = []

    def build(*args, **kwargs):
        engine = real(*args, **kwargs)
        attribute = engine.attribute

        def flaky(images, targets=None, sample_ids=None):
            calls.append(len(images))
            if len(calls) > 1:  # the second chunk fails: one of three is on disk
                raise Interrupt
            return attribute(images, targets, sample_ids)

        engine.attribute = flaky
        return engine

    out = tmp_path / "mp.zarr"
    monkeypatch.setattr(saliency_job, "build_method", build)
    with pytest.raises(Interrupt):
        compute(primary, out, "meaningful_perturbation", MP_PARAMS)
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    assert partial.exists() and not out.exists()
    assert json.loads((partial / "zarr.json").read_text())["attributes"]["done_chunks"] == [0]

    resumed = compute(primary, out, "meaningful_perturbation", MP_PARAMS)
    assert not partial.exists()
    for name in ("maps", "mp_score", "mask_area", "target", "prediction"):
        assert np.isfinite(resumed[name].values).all(), name
        assert resumed[name].values.tobytes() == reference[name].values.tobytes(), name


def test_partial_store_without_the_data_variables_is_discarded(tmp_path):
    """A ``.partial`` store written before a method recorded its variables is not resumed."""
    out = tmp_path / "maps.zarr"
    shape, values = (4, 1, 2, 2), np.ones((2, 1, 2, 2), np.float32)
    coords = {"sample": ("sample", np.arange(4))}
    with pytest.raises(Interrupt), ChunkedMapWriter(out, shape, 2, coords, {}, "f") as writer:
        writer.write_chunk(0, values)
        raise Interrupt
    variables = {"score": ("sample", np.full(4, np.nan, np.float32), {})}
    with ChunkedMapWriter(out, shape, 2, coords, {}, "f", data_vars=variables) as writer:
        assert writer.done_chunks == set()  # discarded, not resumed
        for index in range(2):
            writer.write_chunk(index, values, {"score": np.full(2, index, np.float32)})
    ds = open_maps(out)
    assert ds["score"].values.tolist() == [0, 0, 1, 1]


# -- the diagnostics table on constructed stores -----------------------------------------------


def synthetic_store(path: Path, method: str, maps: np.ndarray, **variables: np.ndarray) -> Path:
    n = len(maps)
    ds = xr.Dataset(
        {"maps": (("sample", "channel", "y", "x"), maps.astype(np.float32))}
        | {name: ("sample", values.astype(np.float32)) for name, values in variables.items()},
        coords={"sample": np.arange(n), "primary": "cnn2-seed0", "method": method},
    )
    write_dataset(ds, path)
    return path


def mp_maps() -> np.ndarray:
    """10 MP maps of 3 channels: 2 all zero, 3 whose deleted fraction spans 0.04 (near-empty),
    5 spanning 0.06 or more; each map equal over its channels, as MP writes them."""
    spans = [0.0, 0.0, 0.04, 0.04, 0.04, 0.06, 0.2, 0.5, 0.9, 1.0]
    maps = np.zeros((10, 1, 4, 4))
    for i, span in enumerate(spans[2:], start=2):
        maps[i] = 0.05  # an offset: the span counts, not the extent
        maps[i, 0, 3, 3] = 0.05 + span
    return np.repeat(maps, 3, axis=1)


def test_diagnostics_are_exact_on_constructed_maps(tmp_path):
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    area = np.linspace(0.0, 0.45, 10)
    mp = synthetic_store(
        tmp_path / "mp.zarr", "meaningful_perturbation", mp_maps(), mp_score=score, mask_area=area
    )
    row = store_diagnostics(mp)
    assert list(row) == COLUMNS
    assert (row["method"], row["primary"], row["n_maps"]) == (
        "meaningful_perturbation",
        "cnn2-seed0",
        10,
    )
    assert row["all_zero_fraction"] == pytest.approx(0.2)
    assert row["near_empty_fraction"] == pytest.approx(0.5)  # 2 zero + 3 spanning 0.04
    assert store_diagnostics(mp, threshold=0.1)["near_empty_fraction"] == pytest.approx(0.6)
    assert row["mp_score_median"] == pytest.approx(np.median(score.astype(np.float32)))
    assert row["mask_area_median"] == pytest.approx(np.median(area.astype(np.float32)))
    assert row["mask_area_mean"] == pytest.approx(np.mean(area.astype(np.float32)))
    assert math.isnan(row["completeness_median"]) and row["notes"] == ""

    ig_sum = np.array([0.9, 0.95, 1.0, 1.0, 2.0, 0.5])
    ig_delta = np.array([1.0, 1.0, 1.0, 0.0, 2.0, 1.0])  # one undefined ratio
    maps = np.zeros((6, 3, 4, 4))
    maps[:4, 1, 2, 2] = 1e-6  # tiny but not zero: gradient scale is arbitrary
    ig = synthetic_store(
        tmp_path / "ig.zarr", "integrated_gradients", maps, ig_sum=ig_sum, ig_delta=ig_delta
    )
    row = store_diagnostics(ig)
    ratio = np.array([0.9, 0.95, 1.0, 1.0, 0.5], np.float32).astype(float)
    assert math.isnan(row["near_empty_fraction"])
    assert row["all_zero_fraction"] == pytest.approx(2 / 6)
    assert row["completeness_median"] == pytest.approx(np.median(ratio))
    assert row["completeness_q05"] == pytest.approx(np.percentile(ratio, 5))
    assert row["completeness_q95"] == pytest.approx(np.percentile(ratio, 95))
    assert "1 maps with ig_delta = 0" in row["notes"]
    assert math.isnan(row["mp_score_median"])


def test_diagnostics_table_files_and_stores_without_variables(tmp_path):
    old_mp = synthetic_store(tmp_path / "old.zarr", "meaningful_perturbation", mp_maps())
    grad = synthetic_store(tmp_path / "grad.zarr", "grad", np.ones((3, 1, 2, 2)))
    tables = tmp_path / "tables"
    csv, md = tables / "map_diagnostics.csv", tables / "map_diagnostics.md"
    table = write_diagnostics(paths=[old_mp, grad, old_mp], out_csv=csv, out_md=md)
    assert len(table) == 2  # one row per distinct store
    read = pd.read_csv(csv)
    assert list(read.columns) == COLUMNS
    assert math.isnan(read.loc[0, "mp_score_median"]) and "store lacks mp_score" in read.notes[0]
    assert read.loc[0, "near_empty_fraction"] == pytest.approx(0.5)  # from the maps alone
    assert read.loc[1, "all_zero_fraction"] == 0 and math.isnan(read.loc[1, "near_empty_fraction"])
    assert json.loads(provenance_path(csv).read_text())["stage"] == "map_diagnostics"
    text = md.read_text()
    assert text.startswith("# Map diagnostics") and "| MP " in text and "| Grad " in text
    with pytest.raises(ConfigError, match="threshold"):
        store_diagnostics(grad, threshold=2.0)


def test_map_spans_and_completeness_ratio_helpers():
    maps = np.zeros((3, 2, 2, 2))
    maps[1, 0, 0, 0], maps[1, 1, 0, 0] = -0.3, 0.2  # |.| summed over channels: 0.5 at one pixel
    maps[2] = 1.0  # flat: span 0 but not zero
    spans, zero = map_spans(maps)
    assert spans.tolist() == pytest.approx([0.0, 0.5, 0.0])
    assert zero.tolist() == [True, False, False]
    ratio = completeness_ratio(np.array([1.0, 2.0]), np.array([2.0, 0.0]))
    assert ratio[0] == 0.5 and math.isnan(ratio[1])
