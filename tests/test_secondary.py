"""Secondary inputs (preprocessing, the image-disjoint train/test split) and the choice of the
learning rate on validation maps."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_config, with_defaults
from safetensors.torch import load_file

from saliency_fingerprints.configuration import canonical_learning_rate, learning_rate_candidates
from saliency_fingerprints.errors import ConfigError, DataError
from saliency_fingerprints.preprocess import preprocess_maps
from saliency_fingerprints.secondary import image_disjoint_split, train_secondary
from saliency_fingerprints.store import MAP_DIMS
from saliency_fingerprints.training import model_metadata, select_candidate


def test_default_preprocessing_is_abs_sum_clipped_and_scaled():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 10, 10)).astype(np.float32)
    out = preprocess_maps(x, "abs_sum", 99.0)
    assert out.shape == (4, 1, 10, 10) and out.dtype == np.float32
    reduced = np.abs(x).sum(1)
    for raw, pre in zip(reduced, out[:, 0], strict=True):
        limit = np.percentile(raw, 99)
        assert np.allclose(pre, np.minimum(raw, limit) / limit, atol=1e-6)
        assert pre.min() >= 0 and pre.max() == pytest.approx(1.0)


def test_other_reductions_and_zero_maps():
    x = np.zeros((2, 3, 4, 4), dtype=np.float32)
    x[0, 1, 2, 2] = -2.0
    signed = preprocess_maps(x, "sum", None)
    assert signed[0, 0, 2, 2] == pytest.approx(-1.0) and not signed[1].any()
    assert preprocess_maps(x, "abs_max", None)[0, 0, 2, 2] == pytest.approx(1.0)
    assert preprocess_maps(x, "none", None).shape == (2, 3, 4, 4)
    with pytest.raises(ConfigError, match="secondary.preprocess.reduce"):
        preprocess_maps(x, "median", None)


def test_split_is_image_disjoint_seeded_and_complete():
    ids = np.arange(100, 400)
    train, test = image_disjoint_split(ids, 0.3, seed=5)
    assert len(test) == 90 and len(train) == 210
    assert not np.intersect1d(train, test).size
    assert np.array_equal(np.union1d(train, test), ids)
    again = image_disjoint_split(ids[::-1], 0.3, seed=5)  # order of ids does not matter
    assert np.array_equal(again[1], test)
    assert not np.array_equal(image_disjoint_split(ids, 0.3, seed=6)[1], test)


def test_split_errors():
    # fractions outside (0, 1): the schema (tests/test_configuration.py)
    with pytest.raises(DataError, match="at least 2 images"):
        image_disjoint_split(np.arange(1), 0.5, 0)


def test_validation_split_is_disjoint_from_fitting_and_test_images():
    from saliency_fingerprints.secondary import validation_split

    ids = np.arange(1000, 1500)
    train, test = image_disjoint_split(ids, 0.3, seed=0)
    fit, val = validation_split(train, 0.2, seed=0)
    assert len(val) == round(len(train) * 0.2) and len(fit) + len(val) == len(train)
    for a, b in ((fit, val), (fit, test), (val, test)):
        assert not np.intersect1d(a, b).size
    assert np.array_equal(np.union1d(fit, val), train)
    assert np.array_equal(validation_split(train[::-1], 0.2, seed=0)[1], val)


# -- learning-rate candidates chosen on validation maps ---------------------------------------


def test_select_candidate_by_validation_then_loss_then_smaller_rate():
    def history(*records):
        return [
            {"epoch": e + 1, "validation_accuracy": a, "validation_loss": loss}
            for e, (a, loss) in enumerate(records)
        ]

    best_late = history((0.5, 0.7), (0.9, 0.3))  # kept epoch 2: 0.9
    best_early = history((0.9, 0.2), (0.6, 0.8))  # kept epoch 1: 0.9, lower loss
    chance = history((0.5, 0.69), (0.5, 0.69))
    assert select_candidate([chance, best_late], [1e-3, 1e-4]) == 1
    assert select_candidate([best_late, best_early], [1e-4, 1e-3]) == 1  # the loss decides
    assert select_candidate([chance, chance], [1e-3, 1e-4]) == 1  # then the smaller rate


def test_canonical_learning_rate_ignores_order_and_lists_of_one():
    assert canonical_learning_rate([1e-3, 1e-4]) == canonical_learning_rate([1e-4, 1e-3])
    assert canonical_learning_rate([3e-4]) == 3e-4 and canonical_learning_rate(3e-4) == 3e-4
    assert learning_rate_candidates([1e-3, 1e-4]) == [1e-4, 1e-3]
    assert learning_rate_candidates(0.01) == [0.01]


def _fingerprint_stores(tmp_path, n=120):
    """Two primaries' map stores: b's maps carry a faint fixed pattern on top of noise."""
    rng = np.random.default_rng(0)
    pattern = np.zeros((1, 8, 8))
    pattern[0, 2:6, 2:6] = 1.5
    paths = []
    for name, extra in (("a", 0.0), ("b", 1.0)):
        maps = rng.normal(size=(n, 1, 8, 8)) + extra * pattern
        ds = xr.Dataset(
            {"maps": (MAP_DIMS, maps.astype(np.float32))},
            coords={
                "sample": np.arange(n),
                "primary": name,
                "target": ("sample", np.arange(n) % 3),
            },
        )
        path = tmp_path / f"{name}.zarr"
        ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
        paths.append(path)
    return paths


def _train(tmp_path, paths, learning_rate, out):
    cfg = with_defaults("secondary", tiny_config()["secondary"])
    cfg.update(architecture="cnn2", learning_rate=learning_rate, epochs=4, batch_size=16)
    weights = tmp_path / out / "model.safetensors"
    train_secondary(
        experiment="exp",
        method="grad",
        variant="original",
        replicates=[
            {"replicate": r, "seed": r, "primaries": ["a", "b"], "maps": paths} for r in (0, 1)
        ],
        cfg=cfg,
        weights_out=weights,
        metrics_out=weights.with_name("metrics.json"),
        device=torch.device("cpu"),
    )
    return weights, json.loads(weights.with_name("metrics.json").read_text())


def test_learning_rate_candidates_are_chosen_on_validation_maps(tmp_path):
    """Every replicate trains each candidate from its own initialisation and keeps the best on
    validation; what it keeps is bit for bit the secondary a single-rate job at that rate trains."""
    paths = _fingerprint_stores(tmp_path)
    rates = [3e-3, 1e-6]  # 1e-6 barely moves in 4 epochs
    weights, metrics = _train(tmp_path, paths, rates, "search")
    for record in metrics["replicates"]:
        searched = record["learning_rate_search"]
        assert [c["learning_rate"] for c in searched] == sorted(rates)
        best = max(searched, key=lambda c: (c["validation_accuracy"], -c["validation_loss"]))
        assert record["learning_rate"] == best["learning_rate"]
        assert record["validation_accuracy"] == best["validation_accuracy"]
        assert record["history"] == best["history"]
    assert {r["learning_rate"] for r in metrics["replicates"]} == {3e-3}, "the test's premise"
    # the chosen rate and kept epoch travel with the weights, for the cross-evaluation's rows
    meta = model_metadata(weights)
    for record in metrics["replicates"]:
        r = record["replicate"]
        assert float(meta[f"rep{r}.learning_rate"]) == record["learning_rate"]
        assert int(meta[f"rep{r}.epoch"]) == record["selected_epoch"]
    searched = load_file(weights)
    single, single_metrics = _train(tmp_path, paths, 3e-3, "single")
    assert "learning_rate_search" not in single_metrics["replicates"][0]
    alone = load_file(single)
    assert searched.keys() == alone.keys()
    for key, value in searched.items():
        assert value.equal(alone[key]), key
    # the candidates' order does not matter
    reordered, _ = _train(tmp_path, paths, rates[::-1], "reordered")
    assert all(v.equal(load_file(reordered)[k]) for k, v in searched.items())
