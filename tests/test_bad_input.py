"""Bad input, tried: each kind stops with one clear line naming the key or file and what was
expected, a non-zero exit, and nothing half-written.

Config mistakes are caught when the workflow is parsed (rules/common.smk), before any job runs:
a dry run prints exactly one ``ERROR: config: ...`` line on stderr and writes nothing. Data
problems surface in the job that meets them: the job prints one ``ERROR: ...`` line (jobs.py),
its output never appears. Data cases are tested through the library where a workflow run would
only add minutes, and through the workflow once (a wrong archive checksum).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import run_workflow, tiny_config, with_defaults
from PIL import Image

from saliency_fingerprints.datasets import open_dataset, prepare_dataset
from saliency_fingerprints.errors import ConfigError, DataError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.saliency import build_method, compute_saliency_maps
from saliency_fingerprints.secondary import train_secondary
from saliency_fingerprints.store import MAP_DIMS
from saliency_fingerprints.training import save_model

CPU = torch.device("cpu")


def written(root: Path) -> list[Path]:
    """Files a failed run left under ``root`` (besides the config and Snakemake's own dir)."""
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.name != "config.yaml" and ".snakemake" not in p.parts
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``ERROR:`` line of a failed command (all lines, if the run repeated it)."""
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    lines = sorted({line for line in proc.stderr.splitlines() if line.startswith("ERROR: ")})
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def config_error(workdir: Path, cfg: dict) -> str:
    """Dry-run ``cfg``: one line on stderr, nothing on stdout, nothing written."""
    before = written(workdir) if workdir.exists() else []
    proc = run_workflow(workdir, cfg, "-n", check=False)
    line = error_line(proc)
    assert line.startswith("ERROR: config: ")
    other = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not line.startswith(("ERROR: ", "Using profile"))
    ]
    assert other == [] and proc.stdout.strip() == "", proc.stdout + proc.stderr
    assert written(workdir) == before
    return line


def two_cnn2(cfg: dict) -> dict:
    return cfg["experiments"]["two_cnn2"]


CONFIG_CASES = {
    "unknown-method": (
        lambda c: two_cnn2(c)["methods"].append("lime"),
        [
            "experiments.two_cnn2.methods[3]: got 'lime'",
            "expected one of: deeplift, grad, gradcam, guided_backprop",
        ],
    ),
    "unknown-architecture": (
        lambda c: two_cnn2(c)["primaries"][0].update(architecture="vgg16"),
        [
            "experiments.two_cnn2.primaries[0].architecture: got 'vgg16'",
            "expected one of: cnn2, minicnn, miniresnet",
        ],
    ),
    "unknown-secondary-architecture": (
        lambda c: c["secondary"].update(architecture="resnet50"),
        ["secondary.architecture: got 'resnet50'", "expected one of: cnn2"],
    ),
    "duplicate-seed": (
        lambda c: two_cnn2(c)["primaries"][0].update(seeds=[0, 1, 0]),
        ["experiments.two_cnn2.primaries: cnn2-seed0 listed more than once", "expected each"],
    ),
    "duplicate-primary": (
        lambda c: two_cnn2(c)["primaries"].append({"architecture": "cnn2", "seeds": [1]}),
        ["experiments.two_cnn2.primaries: cnn2-seed1 listed more than once", "expected each"],
    ),
    "one-primary": (
        lambda c: two_cnn2(c)["primaries"][0].update(seeds=[0]),
        ["experiments.two_cnn2.primaries: got 1 primary; expected at least 2"],
    ),
    "no-experiments": (
        lambda c: c.update(experiments={}),
        ["experiments: got 0 entries; expected at least 1"],
    ),
    "zero-epochs": (
        lambda c: c["primary_training"].update(epochs=0),
        ["primary_training.epochs: got 0; expected a number >= 1"],
    ),
    "negative-samples": (
        lambda c: c["methods"]["smoothgrad"].update(n_samples=-5),
        ["methods.smoothgrad.n_samples: got -5; expected a number >= 1"],
    ),
    "zero-max-images": (
        lambda c: c["saliency"].update(max_images=0),
        ["saliency.max_images: got 0; expected a number >= 1"],
    ),
    "fraction-out-of-range": (
        lambda c: c["secondary"].update(test_fraction=1.5),
        ["secondary.test_fraction: got 1.5; expected a number < 1"],
    ),
    "typo-nested-key": (
        lambda c: c["secondary"].update(epcohs=3),
        ["secondary.epcohs: unknown key; expected one of: architecture, ", " epochs, "],
    ),
    "typo-top-level-key": (
        lambda c: c.update(experiment=c.pop("experiments")),
        ["experiment: unknown key; expected one of:", "experiments"],
    ),
    "typo-experiment-key": (
        lambda c: two_cnn2(c).update(variant=["original"]),
        ["experiments.two_cnn2.variant: unknown key; expected one of:", "variants"],
    ),
    "wrong-type": (
        lambda c: c["saliency"].update(pass_size="64"),
        ["saliency.pass_size: got '64'; expected type integer"],
    ),
    "unknown-variant": (
        lambda c: two_cnn2(c).update(variants=["original", "shuffled"]),
        ["experiments.two_cnn2.variants[1]: got 'shuffled'", "shuffled_per_map"],
    ),
    "unknown-sanity-method": (
        lambda c: c["sanity_checks"]["methods"].append("occlusion"),
        ["sanity_checks.methods[3]: got 'occlusion'", "expected one of: deeplift, grad"],
    ),
    "missing-required-key": (
        lambda c: c["primary_training"].pop("learning_rate"),
        ["primary_training: missing required key 'learning_rate'"],
    ),
    # checked in rules/paper_common.smk, through the same config_error as rules/common.smk's
    "paper-comparison-unknown-experiment": (
        lambda c: c.update(paper_comparison={"tables": {"two_resnets": "resnets"}}),
        ["paper_comparison.tables.two_resnets: experiment 'resnets' is not in 'experiments'"],
    ),
}


# The issue's kinds run in CI; the other cases (a dry run each, ~2 s) are marked slow.
ISSUE_KINDS = {
    "unknown-method",
    "unknown-architecture",
    "duplicate-seed",
    "one-primary",
    "zero-epochs",
    "negative-samples",
    "typo-nested-key",
    "paper-comparison-unknown-experiment",
}


@pytest.mark.parametrize(
    "name",
    [n if n in ISSUE_KINDS else pytest.param(n, marks=pytest.mark.slow) for n in CONFIG_CASES],
)
def test_bad_config_stops_with_one_line(tmp_path, name):
    edit, expected = CONFIG_CASES[name]
    cfg = copy.deepcopy(tiny_config())
    edit(cfg)
    line = config_error(tmp_path, cfg)
    for text in expected:
        assert text in line, line


def test_missing_dataset_folder(tmp_path):
    cfg = tiny_config()
    cfg["dataset"].update(source="folder", path="data/not-there", name="mine")
    line = config_error(tmp_path, cfg)
    assert "dataset.path: directory 'data/not-there' not found" in line
    assert str(tmp_path) in line and "expected an ImageFolder directory" in line


@pytest.mark.slow
def test_missing_dataset_archive(tmp_path):
    cfg = tiny_config()
    cfg["dataset"].update(source="archive", url="file:///nowhere/toy.tar.gz", sha256="0" * 64)
    line = config_error(tmp_path, cfg)
    assert "dataset.url: archive '/nowhere/toy.tar.gz' not found" in line and "expected" in line


@pytest.mark.slow
def test_results_under_a_file(tmp_path):
    (tmp_path / "taken").write_text("a file, not a directory")
    cfg = tiny_config()
    cfg["results"] = "taken/results"
    line = config_error(tmp_path, cfg)
    assert "results: 'taken/results' is not a directory" in line
    assert "expected a writable directory" in line


def make_unwritable(path: Path) -> None:
    """A directory this process cannot write to (immutable as root, read-only otherwise)."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True)
    else:
        path.chmod(0o555)
    try:
        (path / "probe").touch()
    except OSError:
        return
    (path / "probe").unlink()
    make_writable(path)
    pytest.skip("cannot make a directory unwritable here")


def make_writable(path: Path) -> None:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
    path.chmod(0o755)


def test_unwritable_results_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    make_unwritable(locked)
    try:
        cfg = tiny_config()
        cfg["results"] = str(locked / "results")
        line = config_error(tmp_path / "run", cfg)
    finally:
        make_writable(locked)
    assert f"results: '{locked / 'results'}' is not writable" in line
    assert "expected a writable directory" in line
    assert list(locked.iterdir()) == []


# -- data problems: the job that meets them stops, its output never appears ----------------------


def image_folder(root: Path, classes: list[str], size: int = 8) -> Path:
    """A tiny ImageFolder tree (train/ and test/, a few greyscale PNGs per class)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_wrong_archive_checksum_through_the_workflow(tmp_path):
    folder = image_folder(tmp_path / "src" / "toy", ["a", "b"])
    archive = tmp_path / "src" / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="toy")
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    wrong = "f" * 64
    cfg = tiny_config()
    cfg["dataset"].update(source="archive", url=str(archive), sha256=wrong, name="toy")
    workdir = tmp_path / "run"
    proc = run_workflow(workdir, cfg, check=False)
    line = error_line(proc)
    assert line.startswith(f"ERROR: {archive}: sha256 mismatch (expected {wrong}, got {actual})")
    assert not (workdir / "results/data/toy.zarr").exists()
    assert not (workdir / "resources").exists()  # nothing was extracted
    leftovers = [p for p in written(workdir) if p.parts[:2] != ("results", "logs")]
    assert leftovers == []


def test_dataset_with_one_class(tmp_path):
    folder = image_folder(tmp_path / "one", ["only"])
    out = tmp_path / "data" / "one.zarr"
    cfg = {"name": "one", "source": "folder", "path": str(folder)}
    with pytest.raises(DataError, match=r"single class; at least 2 are needed") as err:
        prepare_dataset(cfg=with_defaults("dataset", cfg), out=out)
    assert "'one'" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_missing_dataset_folder_in_the_library(tmp_path):
    cfg = {"name": "x", "source": "folder", "path": str(tmp_path / "absent")}
    with pytest.raises(DataError, match=r"dataset.path .*absent.*not found"):
        prepare_dataset(cfg=with_defaults("dataset", cfg), out=tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_image_size_the_architecture_cannot_take(tmp_path):
    dataset = tmp_path / "tiny.zarr"
    cfg = with_defaults("dataset", name="tiny", source="sklearn_digits", image_size=2)
    prepare_dataset(cfg=cfg, out=dataset)
    out = tmp_path / "primary"
    training = with_defaults("primary_training", tiny_config()["primary_training"])
    with pytest.raises(ConfigError) as err:
        train_primary(
            dataset_path=dataset,
            architecture="cnn2",
            seed=0,
            cfg=training,
            weights_out=out / "model.safetensors",
            metrics_out=out / "metrics.json",
            device=CPU,
        )
    message = str(err.value)
    assert message.startswith(f"primary cnn2-seed0 on {dataset}: architecture 'cnn2'")
    assert "needs images of at least 4x4 pixels, got 2x2" in message
    assert not out.exists()


def test_unknown_names_in_the_library():
    model = build_model("cnn2", 1, 8, 10)
    with pytest.raises(ConfigError, match=r"saliency method 'lime' is unknown; expected"):
        build_method("lime", model, {}, 64)
    with pytest.raises(ConfigError, match=r"architecture 'vgg16' is unknown; expected one of"):
        build_model("vgg16", 1, 8, 10)
    with pytest.raises(ConfigError, match=r"methods.smoothgrad: .*unexpected keyword.*sigma"):
        build_method("smoothgrad", model, {"sigma": 1.0}, 64)


def map_store(path: Path, maps: np.ndarray, primary: str) -> Path:
    ds = xr.Dataset(
        {"maps": (MAP_DIMS, maps.astype(np.float32))},
        coords={
            "sample": np.arange(len(maps)),
            "primary": primary,
            "target": ("sample", np.arange(len(maps)) % 10),
        },
    )
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


def secondary_job(tmp_path: Path, maps: dict[str, np.ndarray]) -> Path:
    """Train a secondary on the given maps (one array per primary); returns its weights path."""
    paths = [map_store(tmp_path / f"{p}.zarr", m, p) for p, m in maps.items()]
    weights = tmp_path / "secondary" / "model.safetensors"
    train_secondary(
        experiment="exp",
        method="grad",
        variant="original",
        replicates=[{"replicate": 0, "seed": 0, "primaries": list(maps), "maps": paths}],
        cfg=with_defaults("secondary", tiny_config()["secondary"]),
        weights_out=weights,
        metrics_out=weights.with_name("metrics.json"),
        device=CPU,
    )
    return weights


def random_maps(seed: int, n: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 8, 8))


def test_nan_maps(tmp_path):
    bad = random_maps(1)
    bad[:, 0, 3, 3] = np.nan  # in every map: the training job reads the training images' only
    with pytest.raises(DataError, match=r"b\.zarr: maps contain NaN .*expected finite maps"):
        secondary_job(tmp_path, {"a": random_maps(0), "b": bad})
    assert not (tmp_path / "secondary").exists()


def test_all_zero_maps(tmp_path):
    with pytest.raises(DataError, match=r"a\.zarr: every map is all-zero.*expected maps with"):
        secondary_job(tmp_path, {"a": np.zeros((40, 1, 8, 8)), "b": random_maps(1)})
    assert not (tmp_path / "secondary").exists()


def test_model_that_makes_nan_maps(tmp_path):
    """A primary whose weights are NaN: the saliency job refuses to store NaN maps."""
    dataset = tmp_path / "digits.zarr"
    prepare_dataset(
        cfg=with_defaults("dataset", name="digits", source="sklearn_digits"), out=dataset
    )
    model = build_model("cnn2", 1, 8, 10)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_model(model, weights, "cnn2", 1, 8, 10)
    out = tmp_path / "maps" / "grad.zarr"
    saliency = with_defaults("saliency", images="all", max_images=64, seed=0, target="true")
    saliency.update(pass_size=64, chunk_size=32)
    with pytest.raises(DataError, match=r"grad\.zarr: grad produced NaN/inf maps for cnn2-seed0"):
        compute_saliency_maps(
            dataset_path=dataset,
            weights_path=weights,
            out=out,
            method="grad",
            method_params={},
            cfg=saliency,
            primary="cnn2-seed0",
            device=CPU,
        )
    assert not out.exists()


def test_corrupt_dataset_store(tmp_path):
    dataset = tmp_path / "digits.zarr"
    prepare_dataset(
        cfg=with_defaults("dataset", name="digits", source="sklearn_digits"), out=dataset
    )
    (dataset / "zarr.json").write_text("{truncated")
    with pytest.raises(DataError, match=r"digits\.zarr: not a readable Zarr store") as err:
        open_dataset(dataset)
    assert "\n" not in str(err.value)


def test_corrupt_map_chunk(tmp_path):
    maps = {"a": random_maps(0), "b": random_maps(1)}
    paths = [map_store(tmp_path / f"{p}.zarr", m, p) for p, m in maps.items()]
    chunks = sorted(p for p in (paths[1] / "maps" / "c").rglob("*") if p.is_file())
    chunks[0].write_bytes(chunks[0].read_bytes()[:50])  # truncated on disk
    with pytest.raises(DataError, match=r"b\.zarr: map chunks are unreadable .*delete it") as err:
        train_secondary(
            experiment="exp",
            method="grad",
            variant="original",
            replicates=[{"replicate": 0, "seed": 0, "primaries": list(maps), "maps": paths}],
            cfg=with_defaults("secondary", tiny_config()["secondary"]),
            weights_out=tmp_path / "s" / "model.safetensors",
            metrics_out=tmp_path / "s" / "metrics.json",
            device=CPU,
        )
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_missing_map_store_metadata(tmp_path):
    path = map_store(tmp_path / "a.zarr", random_maps(0), "a")
    (path / "maps" / "zarr.json").unlink()
    from saliency_fingerprints.saliency import open_maps

    with pytest.raises(DataError, match=r"a\.zarr: expected a 'maps' variable"):
        open_maps(path)


def test_corrupt_model_file(tmp_path):
    """A truncated or foreign weights file: one line naming it, not a safetensors traceback."""
    from saliency_fingerprints.training import load_model, model_metadata

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a safetensors file, just some bytes")
    for read in (load_model, model_metadata):
        with pytest.raises(DataError, match=r"model\.safetensors: not a readable model file"):
            read(path)
