"""Speed machinery of the saliency engine and training loop: it must not change the science.

* ``pass_size: auto`` picks a measured candidate, caches it, and gives the same maps as any
  fixed pass size;
* SmoothGrad / IG built block by block equal the all-rows-at-once formula, and a block's rows stay
  bounded in memory;
* Grad's predictions come from its own forward pass and match the model's argmax;
* the saliency job with ``pass_size: auto`` and several chunks per engine call writes the same
  maps as the engine computes directly, and records the pass size it used;
* the training options (``channels_last``, ``tf32``, ``autocast``) validate, restore global
  flags, and channels-last training follows the default trajectory up to float rounding.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_config, with_defaults

from saliency_fingerprints.configuration import SCHEMA_PATH, check_schema, schema_defaults
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import (
    Gradient,
    IntegratedGradients,
    SmoothGrad,
    build_method,
    candidate_pass_sizes,
    compute_saliency_maps,
    input_gradients,
    keyed_normal,
    open_maps,
    passes,
    resolve_pass_size,
    tune_pass_size,
)
from saliency_fingerprints.store import write_dataset
from saliency_fingerprints.training import (
    TrainSettings,
    load_model,
    numeric_precision,
    save_model,
    train_classifier,
)

CPU = torch.device("cpu")
METHOD_PARAMS = {
    "grad": {},
    "smoothgrad": {"n_samples": 5, "noise_level": 0.2, "seed": 3},
    "integrated_gradients": {"n_steps": 6},
}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the pipeline's jobs: on a busy 2-core machine two OpenMP threads
    contending with other processes run these small passes 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frozen(arch="cnn2", channels=1, size=8, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, channels, size, 10).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# -- pass size ----------------------------------------------------------------------------------


def test_candidates_are_multiples_of_16_within_a_memory_budget():
    for device in (torch.device("cpu"), torch.device("cuda")):
        for row_bytes in (None, 4 * 64, 4 * 3072):
            sizes = candidate_pass_sizes(device, row_bytes)
            assert sizes == sorted(sizes) and sizes[0] == 16 and all(s % 16 == 0 for s in sizes)
    assert max(candidate_pass_sizes(CPU, 4 * 3 * 32 * 32)) == 512  # 6 MiB of input
    assert max(candidate_pass_sizes(CPU, 4 * 8 * 8)) == 8192
    assert max(candidate_pass_sizes(torch.device("cuda"), 4 * 3 * 32 * 32)) == 32768


def test_tune_pass_size_measures_caches_and_respects_max_rows(monkeypatch):
    passes._TUNED_PASS_SIZES.clear()
    model = frozen()
    calls = []
    real = passes.pass_throughput

    def counting(model, rows, **kwargs):
        calls.append(rows.shape[0])
        return real(model, rows, **kwargs)

    monkeypatch.setattr(passes, "pass_throughput", counting)
    chosen = tune_pass_size(model, (1, 8, 8), CPU, max_rows=512, min_time=0.01, rounds=1)
    assert chosen in (16, 32, 64)
    assert sorted(set(calls)) == [16, 32, 64]  # no size that gives fewer than 8 passes
    n_calls = len(calls)
    assert tune_pass_size(model, (1, 8, 8), CPU, max_rows=512) == chosen  # cached
    assert len(calls) == n_calls
    passes._TUNED_PASS_SIZES.clear()


def test_tune_pass_size_prefers_the_smallest_of_equally_fast_sizes(monkeypatch):
    passes._TUNED_PASS_SIZES.clear()
    rates = {16: 100.0, 32: 199.0, 64: 200.0, 128: 150.0}
    monkeypatch.setattr(passes, "pass_throughput", lambda model, rows, **kw: rates[rows.shape[0]])
    assert tune_pass_size(frozen(), (1, 8, 8), CPU, candidates=list(rates), rounds=1) == 32
    passes._TUNED_PASS_SIZES.clear()


def test_resolve_pass_size():
    model = frozen()
    assert resolve_pass_size(48, model, (1, 8, 8)) == 48
    for bad in ("big", 0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="saliency.pass_size"):
            resolve_pass_size(bad, model, (1, 8, 8))


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_autotuned_pass_size_gives_identical_maps(method):
    """Maps with the tuned pass size equal those of fixed sizes (bitwise for Grad at multiples of
    16, to float32 rounding otherwise)."""
    passes._TUNED_PASS_SIZES.clear()
    model = frozen()
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(200) % 10
    ids = list(range(1000, 1200))
    params = METHOD_PARAMS[method]
    tuned = tune_pass_size(model, (1, 8, 8), CPU, max_rows=5000, min_time=0.01, rounds=1)
    auto = resolve_pass_size("auto", model, (1, 8, 8))  # the cached measurement
    assert auto == tuned
    assert auto in candidate_pass_sizes(CPU)
    maps = build_method(method, model, params, auto).attribute(x, targets, ids)
    for fixed in (16, 64, 512):
        other = build_method(method, model, params, fixed).attribute(x, targets, ids)
        if method == "grad":
            assert torch.equal(maps, other)
        else:
            assert torch.allclose(maps, other, rtol=1e-5, atol=1e-6 * maps.abs().max().item())
    passes._TUNED_PASS_SIZES.clear()


# -- blocked SmoothGrad / IG --------------------------------------------------------------------


def reference_rows_at_once(engine, x, targets, ids):
    """The textbook formula: every row of every image in one tensor, reduced at the end."""
    n, tail = x.shape[0], x.shape[1:]
    if isinstance(engine, SmoothGrad):
        k = engine.n_samples
        flat = x.flatten(1)
        std = ((flat.max(1).values - flat.min(1).values) * engine.noise_level).view(n, 1, 1, 1, 1)
        rows = x.unsqueeze(1) + engine.noise(x, ids) * std
        grads, _ = input_gradients(
            engine.model, rows.reshape(n * k, *tail), targets.repeat_interleave(k)
        )
        grads = grads.view(n, k, *tail)
        return (grads * grads).mean(1) if engine.magnitude else grads.mean(1)
    k = engine.n_steps
    alphas = engine.alphas.to(x.dtype).view(1, k, 1, 1, 1)
    rows = (alphas * x.unsqueeze(1)).reshape(n * k, *tail)  # zero baseline
    grads, _ = input_gradients(engine.model, rows, targets.repeat_interleave(k))
    weights = engine.weights.to(x.dtype).view(1, k, 1, 1, 1)
    return (grads.view(n, k, *tail) * weights).sum(1) * x


@pytest.mark.parametrize("method", ["smoothgrad", "integrated_gradients"])
def test_blocks_equal_the_all_rows_formula(method):
    model = frozen(dtype=torch.float64)
    x = torch.rand(40, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = torch.arange(40) % 10
    ids = list(range(40))
    engine = build_method(method, model, METHOD_PARAMS[method], pass_size=16)
    # whole passes: lcm(16, 5) = 80 rows = 16 images (blocks 16, 16, 8); lcm(16, 6) = 48 rows = 8
    block = {"smoothgrad": 16, "integrated_gradients": 8}[method]
    assert engine._block_images(x, engine.gradient_evaluations) == block
    ours = engine.attribute(x, targets, ids)
    assert torch.allclose(ours, reference_rows_at_once(engine, x, targets, ids), rtol=1e-12)


def test_block_memory_is_bounded():
    engine = SmoothGrad(frozen(), pass_size=64, n_samples=25)
    big = torch.zeros(4, 3, 512, 512)  # 3 MB per row: 25 rows of one image are 75 MB
    assert engine._block_images(big, 25) == 3  # 256 MB cap -> 3 images, not 64
    small = torch.zeros(1000, 1, 8, 8)
    assert engine._block_images(small, 25) == 64  # lcm(64, 25) rows = 64 images, whole passes
    assert IntegratedGradients(frozen(), pass_size=50, n_steps=25)._block_images(small, 25) == 2


# -- predictions from the same forward pass -----------------------------------------------------


def test_gradient_predictions_come_from_the_same_pass():
    model = frozen()
    x = torch.rand(70, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        argmax = model(x).argmax(1)
    engine = Gradient(model, pass_size=32)
    maps, targets, preds = engine.attribute_with_predictions(x)
    assert torch.equal(preds, argmax) and torch.equal(targets, argmax)
    assert torch.equal(maps, engine.attribute(x, argmax))
    true = torch.arange(70) % 10
    maps_true, targets_true, preds_true = engine.attribute_with_predictions(x, true)
    assert torch.equal(targets_true, true) and torch.equal(preds_true, argmax)
    assert torch.equal(maps_true, engine.attribute(x, true))


def test_base_class_predictions_match_the_model():
    model = frozen()
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    engine = SmoothGrad(model, pass_size=16, n_samples=3)
    maps, targets, preds = engine.attribute_with_predictions(x, None, list(range(30)))
    with torch.no_grad():
        assert torch.equal(preds, model(x).argmax(1))
    assert torch.equal(targets, preds)
    assert torch.equal(maps, engine.attribute(x, preds, list(range(30))))


# -- the job ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    rng = np.random.default_rng(0)
    n = 150
    ds = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), rng.random((n, 1, 8, 8), dtype=np.float32))},
        coords={
            "sample": np.arange(n, dtype=np.int64),
            "label": ("sample", rng.integers(0, 10, n).astype(np.int64)),
            "split": ("sample", np.where(np.arange(n) % 4 == 0, "test", "train").astype("<U5")),
        },
        attrs={"classes": json.dumps([str(i) for i in range(10)]), "provenance": "test"},
    )
    dataset = root / "data.zarr"
    write_dataset(ds, dataset, chunks={"image": 64})
    torch.manual_seed(0)
    weights = root / "cnn2.safetensors"
    save_model(build_model("cnn2", 1, 8, 10), weights, "cnn2", 1, 8, 10)
    return dataset, weights, ds


@pytest.mark.parametrize(
    "method,target", [("grad", "predicted"), ("grad", "true"), ("smoothgrad", "predicted")]
)
def test_job_with_auto_pass_size_and_grouped_chunks(store, tmp_path, method, target):
    dataset, weights, ds = store
    passes._TUNED_PASS_SIZES.clear()
    cfg = with_defaults("saliency", images="train", target=target, pass_size="auto", chunk_size=10)
    out = tmp_path / "maps.zarr"
    params = METHOD_PARAMS[method]
    compute_saliency_maps(
        dataset_path=dataset,
        weights_path=weights,
        out=out,
        method=method,
        method_params=params,
        cfg=cfg,
        primary="p",
        device=CPU,
        threads=1,
    )
    maps = open_maps(out)
    prov = json.loads(maps.attrs["provenance"])
    used = prov["pass_size_used"]
    assert used in candidate_pass_sizes(CPU) and prov["config"]["pass_size"] == "auto"
    ids = np.flatnonzero(ds["split"].values == "train")
    assert np.array_equal(maps["sample"].values, ids)

    model = load_model(weights)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(ds["image"].values[ids])
    with torch.no_grad():
        preds = model(x).argmax(1)
    explained = preds if target == "predicted" else torch.from_numpy(ds["label"].values[ids])
    assert np.array_equal(maps["prediction"].values, preds.numpy())
    assert np.array_equal(maps["target"].values, explained.numpy())
    direct = build_method(method, model, params, 64).attribute(x, explained, ids.tolist())
    assert np.allclose(maps["maps"].values, direct.numpy(), rtol=1e-5, atol=1e-7)
    passes._TUNED_PASS_SIZES.clear()


def test_job_rejects_a_bad_pass_size(store, tmp_path):
    dataset, weights, _ = store
    for bad in ("big", 0):
        cfg = with_defaults("saliency", images="all", target="predicted", pass_size=bad)
        cfg.update(chunk_size=10)
        with pytest.raises(ConfigError, match="saliency.pass_size"):
            compute_saliency_maps(
                dataset_path=dataset,
                weights_path=weights,
                out=tmp_path / "m.zarr",
                method="grad",
                method_params={},
                cfg=cfg,
                primary="p",
                device=CPU,
            )
    assert not (tmp_path / "m.zarr").exists()


# -- training options ---------------------------------------------------------------------------


def test_training_options_validate():
    """The schema checks the training options and fills in their defaults; ``from_config``
    only reads the filled block."""
    base = {"train_fraction": 0.5, "epochs": 1, "batch_size": 8, "learning_rate": 0.01}
    cfg = with_defaults("primary_training", base, channels_last=True, tf32=True)
    settings = TrainSettings.from_config(cfg)
    assert settings.channels_last and settings.tf32 and settings.autocast == "none"
    assert settings == TrainSettings(1, 8, 0.01, channels_last=True, tf32=True)
    config = tiny_config()
    config["primary_training"]["autocast"] = "fp8"
    with pytest.raises(ConfigError, match=r"^primary_training.autocast: got 'fp8'; expected one"):
        check_schema(config, SCHEMA_PATH)


def test_train_settings_defaults_are_the_schemas():
    """A dataclass default that drifted from the schema would train code-built settings (tests,
    benchmarks) differently from configured ones."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TrainSettings)
        if f.default is not dataclasses.MISSING
    }
    assert defaults == schema_defaults("$defs", "train_defaults")  # values: test_configuration.py
    required = {f.name for f in dataclasses.fields(TrainSettings)} - set(defaults)
    assert required == {"epochs", "batch_size", "learning_rate"}


def test_numeric_precision_restores_flags():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with numeric_precision(tf32=False):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    with numeric_precision(tf32=True):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    assert (matmul.fp32_precision, conv.fp32_precision) == before


def test_channels_last_training_follows_the_default_trajectory():
    """SGD, whose update is linear in the gradient (Adam's normalised step turns rounding-level
    differences of near-zero gradients into +-lr steps)."""
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(96, 3, 8, 8, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    histories, states = [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model("minicnn", 3, 8, 10)
        settings = TrainSettings(2, 32, 1e-2, optimizer="sgd", channels_last=channels_last)
        histories.append(train_classifier(model, (x, y), (x[:32], y[:32]), settings, 0))
        states.append({k: v.contiguous() for k, v in model.state_dict().items()})
    for a, b in zip(*histories, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for name, value in states[0].items():  # weights are O(0.1): 1e-4 is rounding-level drift
        assert (value - states[1][name]).abs().max().item() < 1e-4, name


# -- keyed noise and the map writer ------------------------------------------------------------


def test_keyed_normal_is_standard_normal_and_keyed_by_sample_id():
    z = keyed_normal(0, list(range(100)), 4001)
    assert z.shape == (100, 4001) and z.dtype == torch.float32
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs((z.abs() > 1.96).float().mean().item() - 0.05) < 0.005  # normal tails
    lagged = torch.corrcoef(torch.stack([z[:, :-1].flatten(), z[:, 1:].flatten()]))[0, 1]
    assert abs(lagged.item()) < 0.01
    rows = torch.corrcoef(z[:20])  # different sample ids: independent rows
    assert (rows - torch.eye(20)).abs().max().item() < 0.1
    a, b = keyed_normal(3, [7, 8], 1001), keyed_normal(3, [2, 7], 1001)
    assert torch.equal(a[0], b[1])  # a row depends on its own sample id only
    assert not torch.allclose(keyed_normal(4, [7], 1001)[0], a[0])  # and on the seed
    split = keyed_normal(3, [7, 8], 1001, max_elements=700)  # computed in slices
    assert torch.equal(split, a)


def test_direct_chunk_writes_are_zarr_chunks(tmp_path):
    """Whole chunks written straight to their files are byte for byte what Zarr writes, and the
    store reads back through Zarr and xarray (float32 and float16, with a partial edge chunk)."""
    import zarr

    from saliency_fingerprints.store import ChunkedMapWriter, open_store

    for dtype in ("float32", "float16"):
        n, chunk = 70, 32
        values = np.random.default_rng(1).standard_normal((n, 3, 4, 4)).astype(np.float32)
        coords = {"sample": ("sample", np.arange(n)), "target": ("sample", np.full(n, -1))}
        out = tmp_path / f"{dtype}.zarr"
        with ChunkedMapWriter(out, values.shape, chunk, coords, {}, "f", dtype=dtype) as writer:
            assert writer._direct is not None
            for index, start in enumerate(range(0, n, chunk)):
                part = values[start : start + chunk]
                writer.write_chunk(index, part, {"target": np.full(len(part), index)})
        ds = open_store(out)
        assert np.array_equal(ds["maps"].values, values.astype(dtype))
        assert np.array_equal(ds["target"].values, np.arange(n) // chunk)
        reference = zarr.create_array(
            tmp_path / f"ref-{dtype}.zarr",
            shape=values.shape,
            chunks=(chunk, 3, 4, 4),
            dtype=dtype,
            compressors=None,
            fill_value=np.nan,
        )
        reference[:] = values
        ours = zarr.open_array(out / "maps", mode="r")
        for index in range(3):
            key = (index, 0, 0, 0)
            mine = (out / "maps" / ours.metadata.encode_chunk_key(key)).read_bytes()
            ref = tmp_path / f"ref-{dtype}.zarr" / reference.metadata.encode_chunk_key(key)
            assert mine == ref.read_bytes(), key
        assert not list(out.rglob("*.partial"))


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def close_maps(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding through 11 layers: relative L2 error below 2e-3 (6.4e-4 was
    measured for Grad on an H100, strict float32), and 99% of values within 1e-3 (a ReLU whose
    input is within rounding of zero may switch between devices)."""
    a, b = a.double().cpu(), b.double().cpu()
    assert ((a - b).norm() / a.norm()).item() < 2e-3
    close = torch.isclose(a, b, rtol=1e-3, atol=1e-4 * a.abs().max().item())
    assert close.float().mean().item() > 0.99


@needs_cuda
@pytest.mark.parametrize("method", ["grad", "integrated_gradients"])
def test_cuda_maps_match_cpu_maps(method):
    """Grad and IG on a GPU (its own tuned pass size, strict float32) equal the CPU's maps."""
    passes._TUNED_PASS_SIZES.clear()
    cuda = torch.device("cuda")
    model = frozen(arch="miniresnet", channels=3, size=32)
    x = torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    targets = torch.arange(300) % 10
    ids = list(range(300))
    params = METHOD_PARAMS[method]
    on_cpu = build_method(method, model, params, 64).attribute(x, targets, ids)
    gpu_model = frozen(arch="miniresnet", channels=3, size=32).to(cuda)
    with numeric_precision(tf32=False):
        size = tune_pass_size(gpu_model, (3, 32, 32), cuda)
        on_gpu = build_method(method, gpu_model, params, size).attribute(
            x.to(cuda), targets.to(cuda), ids
        )
    assert size in candidate_pass_sizes(cuda)
    close_maps(on_cpu, on_gpu)
    passes._TUNED_PASS_SIZES.clear()


@needs_cuda
def test_cuda_smoothgrad_noise_is_keyed_normal():
    """On a GPU, SmoothGrad's noise is keyed_normal (the same draws when computed on the CPU),
    and a map does not depend on the batch it is computed in."""
    cuda = torch.device("cuda")
    engine = SmoothGrad(frozen(channels=3, size=8).to(cuda), pass_size=256, n_samples=5, seed=2)
    x = torch.rand(6, 3, 8, 8, device=cuda)
    noise = engine.noise(x, [11, 12, 13, 14, 15, 16])
    expected = keyed_normal(2, [11, 12, 13, 14, 15, 16], 5 * 3 * 8 * 8).view(6, 5, 3, 8, 8)
    assert noise.device.type == "cuda"
    assert torch.allclose(noise.cpu(), expected, atol=1e-5)
    targets = torch.arange(6, device=cuda)
    whole = engine.attribute(x, targets, [11, 12, 13, 14, 15, 16])
    parts = torch.cat(
        [engine.attribute(x[i : i + 1], targets[i : i + 1], [11 + i]) for i in range(6)]
    )
    assert torch.allclose(whole, parts, rtol=1e-5, atol=1e-7)


@needs_cuda
@pytest.mark.parametrize("method", ["grad", "integrated_gradients"])
def test_cuda_job_matches_cpu_job(store, tmp_path, method):
    dataset, weights, _ = store
    cfg = with_defaults("saliency", images="all", target="predicted", pass_size="auto")
    cfg.update(chunk_size=32)
    stores = {}
    for name in ("cpu", "cuda"):
        out = tmp_path / f"{name}.zarr"
        compute_saliency_maps(
            dataset_path=dataset,
            weights_path=weights,
            out=out,
            method=method,
            method_params=METHOD_PARAMS[method],
            cfg=cfg,
            primary="p",
            device=torch.device(name),
            threads=1,
        )
        stores[name] = open_maps(out)
    # float rounding may flip a near-tie prediction (and so the explained class) of this
    # untrained model: compare the maps where both devices explain the same class
    same = stores["cpu"]["prediction"].values == stores["cuda"]["prediction"].values
    assert same.mean() >= 0.98
    a, b = stores["cpu"]["maps"].values[same], stores["cuda"]["maps"].values[same]
    close_maps(torch.from_numpy(a), torch.from_numpy(b))
    assert "cuda" in json.loads(stores["cuda"].attrs["provenance"])["device"]
