"""The Captum-backed methods (GxI, Guided Backprop, DeepLift, Grad-CAM) end to end on a tiny
model: maps through the store job (shape, finite, deterministic, targets recorded), the map
diagnostics and the map grid read their stores, and each method's own known answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import with_defaults

from saliency_fingerprints.diagnostics import markdown_report, store_diagnostics
from saliency_fingerprints.models import ARCHITECTURES, build_model
from saliency_fingerprints.plots import map_grid_rows
from saliency_fingerprints.saliency import (
    SHORT_NAMES,
    CaptumMethod,
    Gradient,
    build_method,
    compute_saliency_maps,
    gradcam_layer,
    open_maps,
)
from saliency_fingerprints.sanity import ShiftedInput
from saliency_fingerprints.store import write_dataset
from saliency_fingerprints.training import save_model

CPU = torch.device("cpu")
NEW_METHODS = {
    "input_x_gradient": "GxI",
    "guided_backprop": "GBP",
    "deeplift": "DL",
    "gradcam": "GC",
}
N_IMAGES = 24
SALIENCY = with_defaults("saliency", images="all", target="predicted", pass_size=16, chunk_size=8)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_job_inputs(root: Path, n: int = N_IMAGES) -> tuple[Path, Path, xr.Dataset]:
    """A 3-channel dataset store of ``n`` random 8x8 images and an untrained cnn2's weights."""
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), rng.random((n, 3, 8, 8), dtype=np.float32))},
        coords={
            "sample": np.arange(n, dtype=np.int64),
            "label": ("sample", rng.integers(0, 10, n).astype(np.int64)),
            "split": ("sample", np.where(np.arange(n) % 4 == 0, "test", "train").astype("<U5")),
        },
        attrs={"classes": json.dumps([str(i) for i in range(10)]), "provenance": "test"},
    )
    dataset = root / "data.zarr"
    write_dataset(ds, dataset, chunks={"image": 8})
    torch.manual_seed(0)
    weights = root / "cnn2.safetensors"
    save_model(build_model("cnn2", 3, 8, 10), weights, "cnn2", 3, 8, 10)
    return dataset, weights, ds


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    return write_job_inputs(tmp_path_factory.mktemp("captum"))


def frozen(arch="cnn2", channels=3, size=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = build_model(arch, channels, size, 10).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def compute(job_inputs, out: Path, method: str, params: dict | None = None, **saliency):
    dataset, weights, _ = job_inputs
    cfg = {**SALIENCY, **saliency}
    compute_saliency_maps(
        dataset_path=dataset,
        weights_path=weights,
        out=out,
        method=method,
        method_params=params or {},
        cfg=cfg,
        primary="cnn2-seed0",
        device=CPU,
        threads=1,
    )
    return open_maps(out)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_store_job_computes_finite_deterministic_maps(job_inputs, tmp_path, method):
    _, weights, source = job_inputs
    ds = compute(job_inputs, tmp_path / "a.zarr", method)
    maps = ds["maps"].values
    assert maps.shape == (N_IMAGES, 3, 8, 8)
    assert np.isfinite(maps).all() and np.abs(maps).sum() > 0
    assert str(ds["method"].values) == method and SHORT_NAMES[method] == NEW_METHODS[method]
    params = json.loads(ds.attrs["method_params"])
    assert params == build_method(method, frozen(), {}, 16).params()
    # the predicted class of every image is recorded and explained
    model = frozen()
    with torch.no_grad():
        preds = model(torch.from_numpy(source["image"].values)).argmax(1).numpy()
    assert np.array_equal(ds["prediction"].values, preds)
    assert np.array_equal(ds["target"].values, preds)
    # deterministic: a second job writes the same bytes
    again = compute(job_inputs, tmp_path / "b.zarr", method)
    assert again["maps"].values.tobytes() == maps.tobytes()
    # the store's maps are the engine's maps (chunked calls change nothing)
    direct = build_method(method, model, {}, 16).attribute(
        torch.from_numpy(source["image"].values), torch.from_numpy(preds)
    )
    np.testing.assert_allclose(maps, direct.numpy(), rtol=1e-5, atol=1e-7)
    # the map diagnostics and the map grid read the store
    row = store_diagnostics(tmp_path / "a.zarr")
    assert row["method"] == method and row["n_maps"] == N_IMAGES and row["notes"] == ""
    assert NEW_METHODS[method] in markdown_report(pd.DataFrame([row]), threshold=0.05)
    rows = map_grid_rows(
        {method: {"cnn2-seed0": tmp_path / "a.zarr"}},
        np.array([0, 5, 9]),
        ["original"],
        {"reduce": "abs_sum", "clip_percentile": 99.0},
        0,
    )
    assert rows[0][0].startswith(NEW_METHODS[method]) and np.isfinite(rows[0][1]).all()


def test_true_class_targets_are_the_labels(job_inputs, tmp_path):
    _, _, source = job_inputs
    ds = compute(job_inputs, tmp_path / "gc.zarr", "gradcam", target="true")
    assert np.array_equal(ds["target"].values, source["label"].values)


def test_gradient_x_input_is_gradient_times_input(job_inputs, tmp_path):
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(10) % 10
    model = frozen()
    gxi = build_method("input_x_gradient", model, {}, 4).attribute(x, targets)
    assert torch.equal(gxi, Gradient(model, pass_size=4).attribute(x, targets) * x)
    # and through the store job, against the Grad store of the same images
    _, _, source = job_inputs
    gxi_store = compute(job_inputs, tmp_path / "gxi.zarr", "input_x_gradient")["maps"].values
    grad_store = compute(job_inputs, tmp_path / "grad.zarr", "grad")["maps"].values
    assert np.array_equal(gxi_store, grad_store * source["image"].values)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_pass_size_and_grouping_do_not_change_maps(method):
    model = frozen(dtype=torch.float64)
    x = torch.rand(11, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = torch.arange(11) % 10
    whole = build_method(method, model, {}, 64).attribute(x, targets)
    small = build_method(method, model, {}, 3)
    parts = torch.cat([small.attribute(x[:5], targets[:5]), small.attribute(x[5:], targets[5:])])
    torch.testing.assert_close(parts, whole, rtol=1e-10, atol=1e-12)
    assert torch.equal(small.attribute(x, targets), small.attribute(x, targets))  # determinism


def counting(explainer) -> list[int]:
    """Record the rows of every call of a Captum object's ``attribute``."""
    sizes: list[int] = []
    real = explainer.attribute

    def attribute(rows, **kwargs):
        sizes.append(len(rows))
        return real(rows, **kwargs)

    explainer.attribute = attribute
    return sizes


def test_captum_calls_hold_about_a_pass_of_rows():
    """The adapter hands Captum ``pass_size // gradient_evaluations`` images per call."""
    model = frozen()
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for method, per_call in (("guided_backprop", 8), ("deeplift", 4)):
        engine = build_method(method, model, {}, 8)
        assert isinstance(engine, CaptumMethod)
        sizes = counting(engine.captum(x))
        engine.attribute(x, torch.zeros(20, dtype=torch.long))
        assert max(sizes) == per_call and sum(sizes) == 20
    assert build_method("deeplift", model, {}, 8).gradient_evaluations == 2


def test_deeplift_maps_sum_to_the_logit_change():
    """DeepLift's summation-to-delta: a map sums to f(x) - f(baseline) of the target logit."""
    model = frozen("miniresnet", dtype=torch.float64)
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    for baseline in ("zero", "min"):
        engine = build_method("deeplift", model, {"baseline": baseline}, 16)
        maps = engine.attribute(x, targets)
        base = torch.zeros_like(x) if baseline == "zero" else x.amin((1, 2, 3), keepdim=True)
        with torch.no_grad():
            delta = (model(x) - model(base.expand_as(x))).gather(1, targets[:, None]).squeeze(1)
        torch.testing.assert_close(maps.flatten(1).sum(1), delta, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "arch,expected",
    [("cnn2", "relu2"), *[(a, "blocks.3.relu2") for a in ARCHITECTURES if a != "cnn2"]],
)
def test_gradcam_layer_rule_works_for_every_architecture(arch, expected):
    assert set(ARCHITECTURES) == {"cnn2", "minicnn", "miniresnet", "minicnn_bn"}
    for size in (8, 32):
        model = frozen(arch, size=size)
        x = torch.rand(2, 3, size, size)
        layer = gradcam_layer(model, x[:1])
        assert dict(model.named_modules())[expected] is layer
        assert gradcam_layer(ShiftedInput(model, 1.0), x[:1]) is layer  # wrappers too
        maps = build_method("gradcam", model, {}, 16).attribute(x, torch.tensor([0, 1]))
        assert maps.shape == x.shape and (maps >= 0).all()  # relu_attributions
        assert torch.equal(maps[:, 0], maps[:, 2])  # one map, repeated over channels


def test_gradcam_is_layer_gradcam_upsampled():
    from captum.attr import LayerAttribution, LayerGradCam

    model = frozen(size=32)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([1, 2, 3, 4])
    for relu in (True, False):
        ours = build_method("gradcam", model, {"relu_attributions": relu}, 16).attribute(x, targets)
        coarse = LayerGradCam(model, model.relu2).attribute(x, targets, relu_attributions=relu)
        assert coarse.shape == (4, 1, 16, 16)
        theirs = LayerAttribution.interpolate(coarse, (32, 32), "bilinear")
        torch.testing.assert_close(ours[:, :1], theirs)
    assert (ours < 0).any()  # signed without the ReLU


@pytest.mark.parametrize(
    "method,invariant",
    [("guided_backprop", True), ("gradcam", True), ("input_x_gradient", False)],
)
def test_sanity_check_input_invariance(method, invariant):
    """The sanity checks' compensated shift works with the new methods: Guided Backprop and
    Grad-CAM see the network only through activations and gradients, GxI multiplies by x."""
    net = frozen(channels=1)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    targets = torch.zeros(6, dtype=torch.long)
    before = build_method(method, net, {}, 64).attribute(x, targets)
    after = build_method(method, ShiftedInput(net, 1.0), {}, 64).attribute(x + 1.0, targets)
    if invariant:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-6)
    else:
        assert (after - before).abs().max() > 0.1 * before.abs().max()
