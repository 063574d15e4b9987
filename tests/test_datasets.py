"""Dataset sources: sklearn digits, torchvision, ImageFolder archives (local, file://, HTTP) and
folders, all ending in one Zarr layout; checksum, safety and atomicity failures."""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import http.server
import io
import json
import pickle
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, planned_jobs, run_workflow, tiny_config, with_defaults
from PIL import Image

from saliency_fingerprints.configuration import SCHEMA_PATH, check_schema
from saliency_fingerprints.datasets import (
    load_sklearn_digits,
    open_dataset,
    prepare_dataset,
    random_split,
    stratified_subset,
)
from saliency_fingerprints.errors import ConfigError, DataError

SHARED_ARCHIVE = (REPO / ".." / "shared" / "data" / "cifar10-jpg.tar.gz").resolve()
SHARED_SHA256 = "53729d4171d849d4292c0d8dc70dc24c8ecade3b705a23922b51d1a31a0b164a"
CLASSES = ["cat", "dog", "emu"]


# -- fixtures and builders ---------------------------------------------------------------------


def prepare(*, cfg: dict, out: Path):
    """``prepare_dataset`` on ``cfg`` with the schema's defaults filled in, as the workflow's
    validation hands the ``dataset`` block to the job."""
    return prepare_dataset(cfg=with_defaults("dataset", cfg), out=out)


def pixel_values(class_index: int, item: int, size: int, colour: bool) -> np.ndarray:
    """A deterministic image whose pixels encode its class and item number."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = (class_index * 70 + item * 3 + (xx + yy) * 2) % 256
    if colour:
        return np.stack([base, (base + 40) % 256, (255 - base) % 256], axis=-1).astype(np.uint8)
    return base.astype(np.uint8)


def make_imagefolder(
    root: Path,
    size: int = 12,
    colour: bool = False,
    n_train: int = 4,
    n_test: int = 2,
    classes: list[str] = CLASSES,
    ext: str = ".png",
) -> Path:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` of PIL-written images."""
    for split, count in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array = pixel_values(c, i + (100 if split == "test" else 0), size, colour)
                Image.fromarray(array).save(folder / f"{i:03d}{ext}")
    return root


def make_tar(src: Path, out: Path, arcname: str = "data") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return out


def make_zip(src: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src).as_posix())
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def archive_cfg(url: str, digest: str, download_dir: Path, **extra) -> dict:
    return {
        "name": "toy",
        "source": "archive",
        "url": url,
        "sha256": digest,
        "download_dir": str(download_dir),
        **extra,
    }


def leftovers(download_dir: Path) -> list[str]:
    """Everything a failed preparation left in the download directory."""
    if not download_dir.exists():
        return []
    return sorted(str(p.relative_to(download_dir)) for p in download_dir.rglob("*") if p.is_file())


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root(tmp_path):
    """A directory served by a local ``http.server`` on 127.0.0.1 (random free port)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- sklearn digits (unchanged) and subsampling ------------------------------------------------


def test_digits_unchanged_by_default():
    cfg = {"name": "digits", "source": "sklearn_digits", "test_fraction": 0.2, "split_seed": 0}
    data = load_sklearn_digits(with_defaults("dataset", cfg))
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert data.images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(data.images[:, 0], digits.images.astype(np.float32) / 16)
    np.testing.assert_array_equal(data.labels, digits.target)
    np.testing.assert_array_equal(data.split, random_split(1797, 0.2, 0))
    assert data.files is None


def test_digits_subsample_resize_and_channels(tmp_path):
    cfg = {
        "name": "digits",
        "source": "sklearn_digits",
        "max_train_images": 100,
        "max_test_images": 30,
        "image_size": 16,
        "channels": 3,
    }
    ds = prepare(cfg=cfg, out=tmp_path / "d.zarr")
    assert ds["image"].shape == (130, 3, 16, 16)
    assert (ds["split"].values == "train").sum() == 100
    images = ds["image"].values
    np.testing.assert_array_equal(images[:, 0], images[:, 2])
    assert 0 <= images.min() and images.max() <= 1


def test_stratified_subset_is_proportional_and_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    keep = stratified_subset(labels, 20, seed=0, stream=0)
    assert len(keep) == 20 and len(np.unique(keep)) == 20
    assert np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(np.bincount(labels[keep]), [10, 6, 3, 1])
    np.testing.assert_array_equal(keep, stratified_subset(labels, 20, seed=0, stream=0))
    assert not np.array_equal(keep, stratified_subset(labels, 20, seed=1, stream=0))
    np.testing.assert_array_equal(stratified_subset(labels, None, 0, 0), np.arange(100))
    np.testing.assert_array_equal(stratified_subset(labels, 1000, 0, 0), np.arange(100))


# -- folder source -----------------------------------------------------------------------------


def test_folder_grayscale_12px_end_to_end(tmp_path):
    root = make_imagefolder(tmp_path / "tree", size=12, colour=False, n_train=4, n_test=2)
    cfg = {"name": "toy", "source": "folder", "path": str(root)}
    prepare(cfg=cfg, out=tmp_path / "toy.zarr")
    ds, info = open_dataset(tmp_path / "toy.zarr")
    assert ds["image"].shape == (18, 1, 12, 12)
    assert ds["image"].dtype == np.float32
    assert info.classes == CLASSES and info.channels == 1 and info.image_size == 12
    split, labels = ds["split"].values, ds["label"].values
    assert list(split[:12]) == ["train"] * 12 and list(split[12:]) == ["test"] * 6
    np.testing.assert_array_equal(labels, [0] * 4 + [1] * 4 + [2] * 4 + [0] * 2 + [1] * 2 + [2] * 2)
    assert ds["file"].values[5] == "train/dog/001.png"
    # lossless PNG: values are exactly v / 255
    np.testing.assert_allclose(
        ds["image"].values[5, 0], pixel_values(1, 1, 12, False) / 255, rtol=0, atol=1e-7
    )


def test_folder_one_level_deeper_rgb_with_conversion(tmp_path):
    make_imagefolder(tmp_path / "tree" / "mydata", size=20, colour=True, ext=".jpg")
    cfg = {"name": "toy", "source": "folder", "path": str(tmp_path / "tree")}
    ds = prepare(cfg=cfg, out=tmp_path / "rgb.zarr")
    assert ds["image"].shape == (18, 3, 20, 20)
    assert 0 <= float(ds["image"].min()) and float(ds["image"].max()) <= 1
    cfg.update(channels=1, image_size=10, max_train_images=6, max_test_images=3)
    ds = prepare(cfg=cfg, out=tmp_path / "grey.zarr")
    assert ds["image"].shape == (9, 1, 10, 10)
    np.testing.assert_array_equal(np.bincount(ds["label"].values[:6]), [2, 2, 2])
    np.testing.assert_array_equal(np.bincount(ds["label"].values[6:]), [1, 1, 1])


def test_folder_mixed_grey_and_colour_becomes_rgb(tmp_path):
    root = make_imagefolder(tmp_path / "tree", size=8, colour=False, n_train=2, n_test=1)
    Image.fromarray(pixel_values(0, 7, 8, True)).save(root / "train" / "cat" / "colour.png")
    ds = prepare(cfg={"name": "m", "source": "folder", "path": str(root)}, out=tmp_path / "m.zarr")
    assert ds["image"].shape == (10, 3, 8, 8)
    grey = ds["image"].values[1]  # train/cat/001.png, grey replicated over channels
    np.testing.assert_array_equal(grey[0], grey[1])
    np.testing.assert_array_equal(grey[0], grey[2])


def test_folder_size_problems(tmp_path):
    root = make_imagefolder(tmp_path / "tree", size=12, n_train=2, n_test=1)
    Image.fromarray(pixel_values(0, 0, 16, False)).save(root / "train" / "emu" / "big.png")
    cfg = {"name": "s", "source": "folder", "path": str(root)}
    with pytest.raises(DataError, match="image_size"):
        prepare(cfg=cfg, out=tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    ds = prepare(cfg={**cfg, "image_size": 12}, out=tmp_path / "s.zarr")
    assert ds["image"].shape == (10, 1, 12, 12)

    rect = make_imagefolder(tmp_path / "rect", size=6, n_train=1, n_test=1)
    for path in rect.rglob("*.png"):
        Image.fromarray(np.zeros((6, 9), np.uint8)).save(path)
    with pytest.raises(DataError, match="square"):
        prepare(cfg={"name": "r", "source": "folder", "path": str(rect)}, out=tmp_path / "r.zarr")


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare(
            cfg={"name": "x", "source": "folder", "path": str(tmp_path / "no")},
            out=tmp_path / "x.zarr",
        )
    only_train = tmp_path / "only_train"
    make_imagefolder(only_train)
    for path in (only_train / "test").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(DataError, match="holds no images"):
        prepare(
            cfg={"name": "x", "source": "folder", "path": str(only_train)}, out=tmp_path / "x.zarr"
        )
    mismatch = make_imagefolder(tmp_path / "mismatch", n_train=1, n_test=1)
    (mismatch / "test" / "emu").rename(mismatch / "test" / "owl")
    with pytest.raises(DataError, match=r"only in train: \['emu'\]; only in test: \['owl'\]"):
        prepare(
            cfg={"name": "x", "source": "folder", "path": str(mismatch)}, out=tmp_path / "x.zarr"
        )
    broken = make_imagefolder(tmp_path / "broken", n_train=1, n_test=1)
    (broken / "train" / "cat" / "000.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot be decoded"):
        prepare(cfg={"name": "x", "source": "folder", "path": str(broken)}, out=tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


# -- archive source: local, file://, HTTP ------------------------------------------------------


def test_archive_tar_gz_local_and_file_url(tmp_path):
    tree = make_imagefolder(tmp_path / "tree", size=12, colour=True)
    archive = make_tar(tree, tmp_path / "toy.tar.gz", arcname="toy")
    downloads = tmp_path / "dl"
    cfg = archive_cfg(str(archive), sha256(archive), downloads)
    ds = prepare(cfg=cfg, out=tmp_path / "a.zarr")
    assert ds["image"].shape == (18, 3, 12, 12)
    assert json.loads(ds.attrs["classes"]) == CLASSES
    extracted = list((downloads / "extracted").iterdir())
    assert [p.name for p in extracted] == [sha256(archive)[:16]]
    assert not [p for p in (downloads / "extracted").iterdir() if p.name.startswith(".")]
    reference = ds["image"].values
    # file:// URL, the completed extraction is reused; the result is identical
    cfg = archive_cfg(archive.as_uri(), sha256(archive).upper(), downloads)
    ds2 = prepare(cfg=cfg, out=tmp_path / "b.zarr")
    np.testing.assert_array_equal(ds2["image"].values, reference)


def test_archive_zip_grayscale_odd_size(tmp_path):
    tree = make_imagefolder(tmp_path / "tree", size=7, colour=False, n_train=3, n_test=2)
    archive = make_zip(tree, tmp_path / "toy.zip")
    cfg = archive_cfg(str(archive), sha256(archive), tmp_path / "dl", image_size=14)
    ds = prepare(cfg=cfg, out=tmp_path / "z.zarr")
    assert ds["image"].shape == (15, 1, 14, 14)
    assert list(np.unique(ds["split"].values, return_counts=True)[1]) == [6, 9]


def test_archive_over_http(tmp_path, http_root):
    root, base = http_root
    tree = make_imagefolder(tmp_path / "tree", size=9, colour=True, n_train=2, n_test=1)
    archive = make_tar(tree, root / "toy.tgz", arcname="toy-v1")
    downloads = tmp_path / "dl"
    cfg = archive_cfg(f"{base}/toy.tgz", sha256(archive), downloads)
    ds = prepare(cfg=cfg, out=tmp_path / "h.zarr")
    assert ds["image"].shape == (9, 3, 9, 9)
    assert (downloads / "toy.tgz").read_bytes() == archive.read_bytes()
    # the verified download is cached: it works with the file gone from the server
    archive.unlink()
    ds = prepare(cfg=cfg, out=tmp_path / "h2.zarr")
    assert ds["image"].shape == (9, 3, 9, 9)


def test_http_errors_leave_nothing(tmp_path, http_root):
    root, base = http_root
    tree = make_imagefolder(tmp_path / "tree", n_train=1, n_test=1)
    archive = make_tar(tree, root / "toy.tar.gz")
    downloads = tmp_path / "dl"
    with pytest.raises(DataError, match="HTTP 404"):
        prepare(
            cfg=archive_cfg(f"{base}/missing.tar.gz", "0" * 64, downloads), out=tmp_path / "x.zarr"
        )
    with pytest.raises(DataError, match="sha256 mismatch"):
        prepare(
            cfg=archive_cfg(f"{base}/toy.tar.gz", "ab" * 32, downloads), out=tmp_path / "x.zarr"
        )
    assert leftovers(downloads) == []
    assert sha256(archive) != "ab" * 32


def test_archive_wrong_checksum_and_missing_file(tmp_path):
    tree = make_imagefolder(tmp_path / "tree", n_train=1, n_test=1)
    archive = make_tar(tree, tmp_path / "toy.tar.gz")
    downloads = tmp_path / "dl"
    with pytest.raises(DataError, match="sha256 mismatch.*nothing was extracted"):
        prepare(cfg=archive_cfg(str(archive), "0" * 64, downloads), out=tmp_path / "x.zarr")
    with pytest.raises(DataError, match="not found"):
        prepare(
            cfg=archive_cfg(str(tmp_path / "nope.tar.gz"), "0" * 64, downloads),
            out=tmp_path / "x.zarr",
        )
    with pytest.raises(ConfigError, match="not a supported archive"):
        prepare(
            cfg=archive_cfg(str(tmp_path / "toy.rar"), "0" * 64, downloads), out=tmp_path / "x.zarr"
        )
    assert leftovers(downloads) == [] and not (tmp_path / "x.zarr").exists()


def test_truncated_archive(tmp_path):
    tree = make_imagefolder(tmp_path / "tree", size=16, n_train=6, n_test=3)
    archive = make_tar(tree, tmp_path / "toy.tar.gz")
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    downloads = tmp_path / "dl"
    with pytest.raises(DataError, match="truncated or corrupt"):
        prepare(
            cfg=archive_cfg(str(truncated), sha256(truncated), downloads), out=tmp_path / "x.zarr"
        )
    assert leftovers(downloads) == []
    assert not (downloads / "extracted").exists() or not any((downloads / "extracted").iterdir())


def test_archive_without_layout(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(pixel_values(0, i, 8, False)).save(flat / f"{i}.png")
    archive = make_tar(flat, tmp_path / "flat.tar.gz", arcname="images")
    downloads = tmp_path / "dl"
    with pytest.raises(DataError, match=r"not an ImageFolder dataset.*train/<class>"):
        prepare(cfg=archive_cfg(str(archive), sha256(archive), downloads), out=tmp_path / "x.zarr")
    assert leftovers(downloads) == []


def _tar_with(tmp_path: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    tree = make_imagefolder(tmp_path / "tree", n_train=1, n_test=1)
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree, arcname="data")
        tar.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        (_member("../escaped.png", size=3), "contains '..'"),
        (_member("data/train/cat/../../../escaped.png", size=3), "contains '..'"),
        (_member("/tmp/escaped-abs.png", size=3), "absolute path"),
        (_member("data/train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd"), "points out"),
        (_member("data/train/cat/up.png", tarfile.SYMTYPE, "../../../../x"), "points out"),
        (_member("data/train/cat/hard.png", tarfile.LNKTYPE, "../outside"), "points out"),
        (_member("data/train/cat/dev", tarfile.CHRTYPE), "device file"),
        (_member("data/train/cat/fifo", tarfile.FIFOTYPE), "device file or FIFO"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member, message):
    archive = _tar_with(tmp_path, member, b"abc")
    downloads = tmp_path / "work" / "dl"
    with pytest.raises(DataError, match=message):
        prepare(cfg=archive_cfg(str(archive), sha256(archive), downloads), out=tmp_path / "x.zarr")
    assert leftovers(downloads) == []
    assert not (tmp_path / "work" / "escaped.png").exists()
    assert not Path("/tmp/escaped-abs.png").exists()


def test_symlink_through_symlink_is_refused_by_the_data_filter(tmp_path):
    """``s -> .`` is harmless alone, but ``s/l -> ..`` resolves to the target's parent."""
    tree = make_imagefolder(tmp_path / "tree", n_train=1, n_test=1)
    archive = tmp_path / "sneaky.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="data")
        tar.addfile(_member("s", tarfile.SYMTYPE, "."))
        tar.addfile(_member("s/l", tarfile.SYMTYPE, ".."))
    downloads = tmp_path / "dl"
    with pytest.raises(DataError, match="refusing to extract"):
        prepare(cfg=archive_cfg(str(archive), sha256(archive), downloads), out=tmp_path / "x.zarr")
    assert leftovers(downloads) == []


@pytest.mark.parametrize("kind", ["traversal", "symlink"])
def test_unsafe_zip_members_are_refused(tmp_path, kind):
    tree = make_imagefolder(tmp_path / "tree", n_train=1, n_test=1)
    archive = make_zip(tree, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        if kind == "traversal":
            zf.writestr("../escaped.png", b"abc")
        else:
            info = zipfile.ZipInfo("train/cat/link.png")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    downloads = tmp_path / "dl"
    with pytest.raises(DataError, match="contains '..'" if kind == "traversal" else "symlink"):
        prepare(cfg=archive_cfg(str(archive), sha256(archive), downloads), out=tmp_path / "x.zarr")
    assert leftovers(downloads) == []
    assert not (tmp_path / "escaped.png").exists()


# -- torchvision source (its own download and md5 check, against a local server) ---------------


def _fake_cifar10(root: Path, n_train: int = 12, n_test: int = 6) -> Path:
    """A tiny archive in CIFAR-10's python format (pickled batches of uint8 rows)."""
    folder = root / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    )
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return folder


def test_torchvision_cifar10_over_http(tmp_path, http_root, monkeypatch):
    from torchvision.datasets import CIFAR10

    root, base = http_root
    folder = _fake_cifar10(root)
    archive = root / "cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(CIFAR10, "train_list", [["data_batch_1", md5(folder / "data_batch_1")]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    meta = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}
    monkeypatch.setattr(CIFAR10, "meta", meta)
    cfg = {
        "name": "c10",
        "source": "torchvision",
        "torchvision_dataset": "CIFAR10",
        "download_dir": str(tmp_path / "dl"),
        "max_train_images": 10,
    }
    ds = prepare(cfg=cfg, out=tmp_path / "c10.zarr")
    assert ds["image"].shape == (16, 3, 32, 32)
    assert json.loads(ds.attrs["classes"]) == [f"c{i}" for i in range(10)]
    raw = pickle.loads((folder / "test_batch").read_bytes())
    np.testing.assert_allclose(
        ds["image"].values[10:].reshape(6, -1), raw["data"] / 255, rtol=0, atol=1e-7
    )
    np.testing.assert_array_equal(ds["label"].values[10:], raw["labels"])
    assert (tmp_path / "dl" / "torchvision" / "cifar-10-python.tar.gz").is_file()

    # a corrupted download fails torchvision's md5 check
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    cfg["download_dir"] = str(tmp_path / "dl2")
    with pytest.raises(DataError, match="integrity check failed"):
        prepare(cfg=cfg, out=tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_grayscale_over_http(tmp_path, http_root, monkeypatch):
    from torchvision.datasets import MNIST

    root, base = http_root
    rng = np.random.default_rng(1)
    files = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (10, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx(np.arange(10)),
    }
    resources = []
    for name, payload in files.items():
        (root / name).write_bytes(payload)
        resources.append((name, hashlib.md5(payload).hexdigest()))
    monkeypatch.setattr(MNIST, "mirrors", [f"{base}/"])
    monkeypatch.setattr(MNIST, "resources", resources)
    cfg = {
        "name": "mnist",
        "source": "torchvision",
        "torchvision_dataset": "MNIST",
        "download_dir": str(tmp_path / "dl"),
        "image_size": 14,
    }
    ds = prepare(cfg=cfg, out=tmp_path / "mnist.zarr")
    assert ds["image"].shape == (30, 1, 14, 14)
    assert list(np.unique(ds["split"].values, return_counts=True)[1]) == [10, 20]
    np.testing.assert_array_equal(ds["label"].values[20:], np.arange(10))


# -- the real shared CIFAR-10 archive ----------------------------------------------------------


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="shared CIFAR-10 archive not present")
def test_shared_cifar10_archive_subsample(tmp_path):
    cfg = archive_cfg(
        str(SHARED_ARCHIVE),
        SHARED_SHA256,
        tmp_path / "dl",
        name="cifar10",
        max_train_images=50,
        max_test_images=20,
    )
    prepare(cfg=cfg, out=tmp_path / "cifar10.zarr")
    ds, info = open_dataset(tmp_path / "cifar10.zarr")
    assert info.classes == [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    assert ds["image"].shape == (70, 3, 32, 32)
    split, labels = ds["split"].values, ds["label"].values
    np.testing.assert_array_equal(np.bincount(labels[split == "train"]), [5] * 10)
    np.testing.assert_array_equal(np.bincount(labels[split == "test"]), [2] * 10)
    images = ds["image"].values
    assert 0 <= images.min() and images.max() <= 1 and 0.2 < images.mean() < 0.8
    folders = [f.split("/")[1] for f in ds["file"].values]
    assert folders == [info.classes[lab] for lab in labels]


# -- the workflow, configuration and planning --------------------------------------------------


TORCHVISION = {"source": "torchvision", "torchvision_dataset": "MNIST"}
ARCHIVE = {"source": "archive", "url": "toy.tar.gz", "sha256": "0" * 64}


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"channels": 2}, "dataset.channels: got 2; expected one of: None, 1, 3"),
        ({"channels": True}, "dataset.channels: got True; expected type null or integer"),
        ({"image_size": 0}, "dataset.image_size: got 0; expected a number >= 1"),
        ({"max_train_images": 0}, "dataset.max_train_images: got 0; expected a number >= 1"),
        ({"max_test_images": 2.5}, "dataset.max_test_images: got 2.5; expected type null or"),
        ({"test_fraction": 1.0}, "dataset.test_fraction: got 1.0; expected a number < 1"),
        ({"split_seed": -1}, "dataset.split_seed: got -1; expected a number >= 0"),
        ({"download_dir": ""}, "dataset.download_dir: got ''; expected a string of at least 1"),
        ({"source": "kaggle"}, "dataset.source: got 'kaggle'; expected one of: sklearn_digits,"),
        (
            {**TORCHVISION, "torchvision_dataset": "ImageNet"},
            "dataset.torchvision_dataset: got 'ImageNet'; expected one of: CIFAR10,",
        ),
        ({"source": "torchvision"}, "dataset: missing required key 'torchvision_dataset'"),
        ({**ARCHIVE, "sha256": None}, "dataset.sha256: got None; expected type string"),
        ({**ARCHIVE, "sha256": "abc"}, "dataset.sha256: got 'abc'; expected a string matching"),
        ({**ARCHIVE, "sha256": "xyz"}, "dataset.sha256: got 'xyz'; expected a string matching"),
        ({"source": "archive", "url": "toy.tar.gz"}, "dataset: missing required key 'sha256'"),
        ({"source": "archive", "sha256": "0" * 64}, "dataset: missing required key 'url'"),
        ({**ARCHIVE, "url": ""}, "dataset.url: got ''; expected a string of at least 1"),
        ({"source": "folder"}, "dataset: missing required key 'path'"),
    ],
)
def test_schema_checks_the_dataset_settings(settings, expected):
    """The loaders read the validated block as it is: the schema alone checks each value,
    and that a source has its keys."""
    cfg = tiny_config()
    cfg["dataset"].update(settings)
    with pytest.raises(ConfigError) as err:
        check_schema(cfg, SCHEMA_PATH)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_schema_requires_source_keys(tmp_path):
    cfg = tiny_config()
    cfg["dataset"] = {"name": "x", "source": "archive", "url": "data.tar.gz"}
    proc = run_workflow(tmp_path / "a", cfg, "-n", check=False)
    assert proc.returncode != 0 and "sha256" in proc.stdout + proc.stderr
    cfg["dataset"] = {"name": "x", "source": "folder", "path": str(tmp_path / "missing")}
    proc = run_workflow(tmp_path / "b", cfg, "-n", check=False)
    assert proc.returncode != 0 and "missing" in (proc.stdout + proc.stderr).lower()


def test_folder_input_is_planned(tmp_path):
    tree = make_imagefolder(tmp_path / "tree", n_train=1, n_test=1)
    cfg = tiny_config()
    cfg["dataset"] = {"name": "toy", "source": "folder", "path": str(tree)}
    counts = planned_jobs(tmp_path / "plan", cfg)
    assert counts.get("prepare_dataset") == 1


@pytest.mark.slow
def test_workflow_on_grayscale_12px_folder(tmp_path):
    """The whole workflow on a tiny greyscale ImageFolder of a size that is not digits' 8."""
    import pandas as pd

    from saliency_fingerprints.saliency import open_maps

    tree = make_imagefolder(tmp_path / "tree", size=12, colour=False, n_train=30, n_test=15)
    cfg = copy.deepcopy(tiny_config())
    cfg["dataset"] = {"name": "toy12", "source": "folder", "path": str(tree)}
    cfg["saliency"]["max_images"] = None
    workdir = tmp_path / "run"
    run_workflow(workdir, cfg)
    results = workdir / "results"
    ds, info = open_dataset(results / "data" / "toy12.zarr")
    assert (info.n_images, info.channels, info.image_size) == (135, 1, 12)
    maps = open_maps(results / "saliency" / "predicted" / "grad" / "cnn2-seed0.zarr")
    assert maps["maps"].shape == (135, 1, 12, 12)
    table = pd.read_csv(results / "experiments" / "two_cnn2" / "cross_evaluation" / "original.csv")
    assert len(table) > 0 and table.select_dtypes("number").notna().all().all()
