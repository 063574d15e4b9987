"""Input-agnostic class maps as a workflow method (``input_agnostic``, IA): built from the
registry, run by the store job with the train split as sample set, one keyed draw per row
(batch-independent, deterministic), the batched search equal to the single-map one, and the
per-map diagnostics stored beside the maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_captum_methods import compute, frozen, write_job_inputs

from saliency_fingerprints.agnostic import (
    AgnosticSettings,
    batch_diagnostics,
    input_agnostic_map,
    input_agnostic_maps,
    map_diagnostics,
)
from saliency_fingerprints.diagnostics import store_diagnostics
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.plots import class_map_rows, plot_class_maps
from saliency_fingerprints.runtime import seed_generator
from saliency_fingerprints.saliency import METHODS, SHORT_NAMES, build_method
from saliency_fingerprints.saliency.input_agnostic import InputAgnostic

# tiny settings: a few iterations, small minibatches, eta as given (no scaling)
TINY = dict(
    batch_size=8,
    iterations=6,
    refine_iterations=4,
    cycles=2,
    eta=1.0,
    eta_reference_elements=None,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    return write_job_inputs(tmp_path_factory.mktemp("ia"))


def samples(n: int = 40) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def engine(pass_size: int = 16, **params) -> InputAgnostic:
    method = build_method("input_agnostic", frozen(), {**TINY, **params}, pass_size)
    method.set_sample_set(samples())
    return method


def test_registered_with_short_name_and_sample_set_hook():
    assert METHODS["input_agnostic"] is InputAgnostic and SHORT_NAMES["input_agnostic"] == "IA"
    method = build_method("input_agnostic", frozen(), {}, 64)
    assert method.needs_sample_set and not METHODS["grad"].needs_sample_set
    # the paper's defaults: b 128, K 650, 150 refinement steps, 2 cycles; eta 30 at 3x224x224
    assert method.settings.radius((3, 224, 224)) == pytest.approx(30.0)
    assert method.settings.radius((3, 32, 32)) == pytest.approx(30 / 7)
    assert method.gradient_evaluations == 2 * (128 * 800 + 650 * 86)
    with pytest.raises(ConfigError, match="no sample set"):
        method.attribute(samples(2), torch.tensor([0, 1]), [0, 1])
    with pytest.raises(ConfigError, match="methods.input_agnostic"):
        build_method("input_agnostic", frozen(), {"lam": -1.0}, 64)


def test_batched_maps_equal_single_maps():
    """One batched call = :func:`input_agnostic_map` per row with the same generators."""
    model, data = frozen(), samples()
    settings = AgnosticSettings(
        batch_size=8, iterations=6, refine_iterations=4, eta=1.0, eta_reference=None
    )
    labels = [3, 7, 3]
    batched = input_agnostic_maps(
        model, data, labels, settings, generators=[seed_generator(0, i) for i in range(3)]
    )
    for i, label in enumerate(labels):
        single = input_agnostic_map(model, data, label, settings, generator=seed_generator(0, i))
        torch.testing.assert_close(batched[i], single, rtol=1e-5, atol=1e-6)
    diagnostics = batch_diagnostics(model, data, labels, batched, settings)
    for i, label in enumerate(labels):
        reference = map_diagnostics(model, data, label, batched[i], settings)
        assert diagnostics["success"][i] == pytest.approx(reference.success)
        assert diagnostics["probability"][i] == pytest.approx(reference.probability, rel=1e-5)
        assert diagnostics["norm"][i] == pytest.approx(reference.norm, rel=1e-5)
        assert diagnostics["norm"][i] <= 1.0 + 1e-5  # in the eta ball


def test_a_map_does_not_depend_on_its_batch_and_rows_are_draws():
    images = samples(6)
    targets = torch.tensor([1, 1, 4, 4, 2, 1])
    ids = [10, 11, 12, 13, 14, 15]
    together = engine(pass_size=48).attribute(images, targets, ids)  # 6 maps per pass
    alone = engine(pass_size=8).attribute(images, targets, ids)  # 1 map per pass
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    # reordered and split differently: each row's map is a function of (seed, id, target)
    order = [5, 2, 0, 4, 1, 3]
    shuffled = engine(pass_size=24).attribute(
        images[order], targets[order], [ids[i] for i in order]
    )
    torch.testing.assert_close(shuffled, together[order], rtol=1e-5, atol=1e-6)
    # the image is not used; another id of the same class is another draw
    other_images = engine(pass_size=48).attribute(samples(6) * 0, targets, ids)
    torch.testing.assert_close(other_images, together, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[0], together[1])
    # another seed, other draws
    assert not torch.allclose(engine(seed=1).attribute(images, targets, ids), together)


def test_max_samples_is_a_seeded_subset():
    method = engine(max_samples=10)
    again = engine(max_samples=10)
    assert method.sample_set.shape[0] == 10
    torch.testing.assert_close(method.sample_set, again.sample_set)


def test_store_job_writes_deterministic_maps_and_diagnostics(job_inputs, tmp_path):
    _, _, ds = job_inputs
    first = compute(job_inputs, tmp_path / "a.zarr", "input_agnostic", TINY)
    second = compute(job_inputs, tmp_path / "b.zarr", "input_agnostic", TINY, pass_size=8)
    assert str(first["method"].values) == "input_agnostic"
    maps = first["maps"].values
    assert np.isfinite(maps).all() and maps.shape == (24, 3, 8, 8)
    np.testing.assert_allclose(maps, second["maps"].values, rtol=1e-5, atol=1e-6)
    for name in ("ia_success", "ia_probability", "ia_norm"):
        values = first[name].values
        assert np.isfinite(values).all(), name
        np.testing.assert_allclose(values, second[name].values, rtol=1e-5, atol=1e-6)
    assert ((first["ia_success"].values >= 0) & (first["ia_success"].values <= 1)).all()
    assert (first["ia_norm"].values <= 1.0 + 1e-5).all()
    # the diagnostics are those of the row's map against the train split, for its target
    model = frozen()
    train = torch.from_numpy(ds["image"].values[ds["split"].values == "train"])
    settings = engine().settings
    row = 5
    reference = map_diagnostics(
        model, train, int(first["target"].values[row]), torch.from_numpy(maps[row]), settings
    )
    assert first["ia_success"].values[row] == pytest.approx(reference.success, abs=1e-6)
    assert first["ia_norm"].values[row] == pytest.approx(reference.norm, rel=1e-5)
    # the class-map figure (the paper's Fig. 3): a row per primary, a column per class
    stores = {"cnn2-seed0": tmp_path / "a.zarr", "again": tmp_path / "b.zarr"}
    classes, rows = class_map_rows(stores)
    assert classes == sorted(set(first["target"].values.tolist()))
    label = classes[0]
    first_row = int(np.flatnonzero(first["target"].values == label)[0])
    np.testing.assert_array_equal(rows["cnn2-seed0"][label][0], maps[first_row])
    plot_class_maps(stores=stores, out=tmp_path / "class_maps.png", class_names=None)
    assert (tmp_path / "class_maps.png").stat().st_size > 0
    # the map diagnostics table summarises them
    row = store_diagnostics(tmp_path / "a.zarr")
    assert row["ia_success_median"] == pytest.approx(np.median(first["ia_success"].values))
    assert row["ia_norm_median"] == pytest.approx(np.median(first["ia_norm"].values), rel=1e-6)
    assert row["notes"] == ""
