"""Dataset sources, all ending in one labelled Zarr layout.

The dataset store (``results/data/<name>.zarr``) is an xarray dataset with

* ``image (sample, channel, y, x)`` float32 in [0, 1],
* coordinates ``label (sample)`` (class index), ``split (sample)`` ("train" / "test") and
  ``sample`` (0..N-1, the image's identity everywhere downstream),
* optionally ``file (sample)``: the image's path inside its ImageFolder tree (folder and archive
  sources), so every sample can be traced back to its file,
* attributes ``classes`` (JSON list of class names), ``source`` and ``provenance``.

A source is a function ``config -> ImageSet`` registered in :data:`SOURCES`:

* ``sklearn_digits`` - scikit-learn's embedded 8x8 digits, split at random (``test_fraction``).
* ``torchvision`` - ``torchvision.datasets.<torchvision_dataset>`` downloaded into
  ``<download_dir>/torchvision`` with torchvision's own integrity (md5) check; official split.
* ``archive`` - an ImageFolder archive at ``url`` (http(s)://, file:// or a plain path), checked
  against ``sha256`` and extracted safely and atomically (:mod:`.sources`).
* ``folder`` - a local ImageFolder directory ``path`` (``train/<class>/*``, ``test/<class>/*``).

Every source then goes through the same steps: an optional seeded, class-stratified subsample of
each split (``max_train_images``, ``max_test_images``; chosen before any image is decoded), an
optional conversion to ``channels`` (1: PIL's ITU-R 601-2 luma; 3: grey replicated) and an
optional bilinear (antialiased) resize to ``image_size`` x ``image_size``. Image files decode with
PIL: palette, alpha and CMYK images become RGB (alpha dropped, not composited), 16-bit greyscale
is reduced to 8 bit, and 8-bit values map to float32 in [0, 1] as value / 255. Samples are
ordered train then test, each by class and file name (ImageFolder order) or in the source's own
order (torchvision, digits).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import DataError
from .provenance import Provenance, as_attr
from .sources import (
    SPLITS,
    archive_kind,
    archive_name,
    extract,
    fetch,
    index_imagefolder,
)
from .store import open_store, write_dataset

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) "train" / "test"
    classes: list[str]
    files: np.ndarray | None = None  # (N,) path of each image inside its ImageFolder tree

    def validate(self, origin: str) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise DataError(
                f"{origin}: expected square images (N, C, H, W), got {self.images.shape}"
            )
        if (
            self.labels.shape != (n,)
            or self.split.shape != (n,)
            or (self.files is not None and np.shape(self.files) != (n,))
        ):
            raise DataError(f"{origin}: labels/split do not match the {n} images")
        if len(np.unique(self.labels)) < 2:
            raise DataError(f"{origin}: the dataset has a single class; at least 2 are needed")
        for part in ("train", "test"):
            if not np.any(self.split == part):
                raise DataError(f"{origin}: the {part!r} split is empty")
        if not np.isfinite(self.images).all():
            raise DataError(f"{origin}: images contain NaN or infinite values")


def random_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded train/test assignment for sources without an official split."""
    order = np.random.default_rng(seed).permutation(n)
    split = np.full(n, "train", dtype="<U5")
    split[order[: max(1, round(n * test_fraction))]] = "test"
    return split


# -- settings shared by every source ----------------------------------------------------------
# ``cfg`` is the schema-validated ``dataset`` block: the schema checks every value and fills in
# the defaults.


def stratified_subset(labels: np.ndarray, size: int | None, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subsample of ``size`` items (all if None).

    Each class gets ``size`` times its share, rounded down; the remaining places go to the classes
    with the largest remainders (ties: lower class index first)."""
    labels = np.asarray(labels)
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, stream, 0x57A7])
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
        if k > 0
    ]
    if int((take == 0).sum()):
        log.warning(
            "a subsample of %d images leaves %d of %d classes without images",
            size,
            int((take == 0).sum()),
            len(classes),
        )
    return np.sort(np.concatenate(chosen))


def subsample_split(cfg: dict, split: str, labels: np.ndarray) -> np.ndarray:
    """Indices kept of one split under ``dataset.max_<split>_images``."""
    size = cfg[f"max_{split}_images"]
    return stratified_subset(labels, size, int(cfg["split_seed"]), SPLITS.index(split))


# -- decoding images with PIL ------------------------------------------------------------------

_GREY_MODES = {"1", "L", "LA", "La"}
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _to_l_or_rgb(img, origin: str):
    """A PIL image in mode "L" or "RGB" (see the module docstring for the conversions)."""
    from PIL import Image

    mode = img.mode
    if mode == "L" or mode == "RGB":
        return img
    if mode in _GREY_MODES:
        return img.convert("L")
    if mode in _COLOUR_MODES:
        return img.convert("RGB")
    if mode in _WIDE_GREY_MODES:  # 16-bit greyscale (PNG): keep the top 8 bits
        wide = np.asarray(img, dtype=np.int64)
        return Image.fromarray(np.clip(wide >> 8, 0, 255).astype(np.uint8), mode="L")
    raise DataError(f"{origin}: image mode {mode!r} is not supported (expected greyscale or RGB)")


def adapt_image(img, channels: int | None, image_size: int | None, origin: str) -> np.ndarray:
    """A PIL image as uint8 ``(H, W)`` (grey) or ``(H, W, 3)``, converted and resized."""
    from PIL import Image

    img = _to_l_or_rgb(img, origin)
    if channels == 1 and img.mode == "RGB":
        img = img.convert("L")
    elif channels == 3 and img.mode == "L":
        img = img.convert("RGB")
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def stack_images(arrays: Sequence[np.ndarray], origins: Sequence[str]) -> np.ndarray:
    """uint8 ``(H, W[, 3])`` arrays -> float32 ``(N, C, H, W)`` in [0, 1]; grey becomes RGB when
    the images mix both (as PIL's convert("RGB")). All must have one size."""
    if not arrays:
        raise DataError("no images to stack")
    height, width = arrays[0].shape[:2]
    for array, origin in zip(arrays, origins, strict=True):
        if array.shape[:2] != (height, width):
            raise DataError(
                f"{origin}: image is {array.shape[1]}x{array.shape[0]} but {origins[0]} is "
                f"{width}x{height}; set dataset.image_size to resize every image to one size"
            )
    colour = any(array.ndim == 3 for array in arrays)
    out = np.empty((len(arrays), 3 if colour else 1, height, width), dtype=np.float32)
    for i, array in enumerate(arrays):
        if array.ndim == 3:
            out[i] = array.transpose(2, 0, 1)
        else:
            out[i] = array[None]
    out *= np.float32(1 / 255)
    return out


def decode_files(
    files: Sequence[Path], channels: int | None, image_size: int | None, root: Path
) -> np.ndarray:
    """Decode image files with PIL into float32 ``(N, C, H, W)`` in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    arrays, origins = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                arrays.append(adapt_image(img, channels, image_size, str(path)))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"{path}: cannot be decoded as an image ({err})") from None
        origins.append(str(path.relative_to(root)))
    return stack_images(arrays, origins)


# -- the sources -------------------------------------------------------------------------------


def load_sklearn_digits(cfg: dict) -> ImageSet:
    """scikit-learn's embedded 1,797 8x8 handwritten digits (values 0..16), offline."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    split = random_split(len(labels), cfg["test_fraction"], cfg["split_seed"])
    keep = np.concatenate(
        [np.flatnonzero(split == s)[subsample_split(cfg, s, labels[split == s])] for s in SPLITS]
    )
    keep.sort()
    images, labels, split = images[keep], labels[keep], split[keep]
    channels, size = cfg["channels"], cfg["image_size"]
    if channels is not None or size is not None:
        images = adapt_float_images(images, channels, size)
    return ImageSet(images, labels, split, [str(c) for c in digits.target_names])


def adapt_float_images(images: np.ndarray, channels: int | None, size: int | None) -> np.ndarray:
    """Channel conversion and bilinear resize of float ``(N, C, H, W)`` images (PIL mode "F")."""
    from PIL import Image

    if channels == 1 and images.shape[1] == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        images = np.einsum("nchw,c->nhw", images, weights)[:, None]
    elif channels == 3 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    if size is not None and images.shape[2:] != (size, size):
        out = np.empty((*images.shape[:2], size, size), dtype=np.float32)
        for n, c in np.ndindex(*images.shape[:2]):
            plane = Image.fromarray(np.ascontiguousarray(images[n, c]), mode="F")
            out[n, c] = np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR))
        images = np.clip(out, 0.0, 1.0)
    return np.ascontiguousarray(images, dtype=np.float32)


def _torchvision_split(cls, name: str, root: Path, split: str):
    kwargs = {"split": split} if name == "SVHN" else {"train": split == "train"}
    try:
        return cls(root=str(root), download=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        raise DataError(
            f"torchvision {name} ({split}) in {root}: download or integrity check failed "
            f"({type(err).__name__}: {err}); without internet, use dataset.source 'archive' or "
            "'folder', or put the dataset's files there"
        ) from None


def load_torchvision(cfg: dict) -> ImageSet:
    """A torchvision dataset with its official train/test split, downloaded and md5-checked by
    torchvision itself into ``<download_dir>/torchvision``."""
    from PIL import Image
    from torchvision import datasets as tv_datasets

    name = cfg["torchvision_dataset"]  # one of the schema's, which requires it for torchvision
    root = Path(cfg["download_dir"]) / "torchvision"
    root.mkdir(parents=True, exist_ok=True)
    channels, size = cfg["channels"], cfg["image_size"]
    parts, classes = [], None
    for split in SPLITS:
        ds = _torchvision_split(getattr(tv_datasets, name), name, root, split)
        data = np.asarray(ds.data)
        labels = np.asarray(ds.labels if name == "SVHN" else ds.targets, dtype=np.int64)
        if name == "SVHN":  # stored (N, C, H, W); PIL wants (H, W, C)
            data = data.transpose(0, 2, 3, 1)
        classes = list(getattr(ds, "classes", None) or [str(c) for c in range(10)])
        keep = subsample_split(cfg, split, labels)
        arrays = [
            adapt_image(Image.fromarray(data[i]), channels, size, f"{name} {split} #{i}")
            for i in keep
        ]
        images = stack_images(arrays, [f"{name} {split} #{i}" for i in keep])
        parts.append((images, labels[keep], np.full(len(keep), split, dtype="<U5")))
    return ImageSet(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        classes,
    )


def load_imagefolder(cfg: dict, path: Path, origin: str) -> ImageSet:
    """Index an ImageFolder tree, subsample each split, decode the chosen files."""
    index = index_imagefolder(path, origin)
    channels, size = cfg["channels"], cfg["image_size"]
    files, labels, split = [], [], []
    for part in SPLITS:
        part_labels = np.asarray(index.labels[part], dtype=np.int64)
        keep = subsample_split(cfg, part, part_labels)
        files += [index.files[part][i] for i in keep]
        labels.append(part_labels[keep])
        split += [part] * len(keep)
    log.info(
        "%s: decoding %d images of %d classes from %s",
        origin,
        len(files),
        len(index.classes),
        index.root,
    )
    images = decode_files(files, channels, size, index.root)
    relative = np.array([p.relative_to(index.root).as_posix() for p in files])
    return ImageSet(
        images, np.concatenate(labels), np.array(split, dtype="<U5"), index.classes, relative
    )


def load_folder(cfg: dict) -> ImageSet:
    """A local ImageFolder directory (``train/<class>/*``, ``test/<class>/*``)."""
    path = cfg["path"]  # the schema requires it for source folder
    return load_imagefolder(cfg, Path(path), f"dataset.path {str(path)!r}")


def load_archive(cfg: dict) -> ImageSet:
    """An ImageFolder archive: fetched, sha256-checked, safely and atomically extracted."""
    url = cfg["url"]  # the schema requires url and sha256 (64 hex digits) for source archive
    sha256 = cfg["sha256"].lower()
    name = archive_name(url)
    archive_kind(name)  # an unsupported suffix stops before any download
    download_dir = Path(cfg["download_dir"])
    archive = fetch(url, sha256, download_dir)
    root = extract(archive, name, sha256, download_dir)
    return load_imagefolder(cfg, root, f"dataset.url {url!r}")


SOURCES: dict[str, Callable[[dict], ImageSet]] = {
    "sklearn_digits": load_sklearn_digits,
    "torchvision": load_torchvision,
    "archive": load_archive,
    "folder": load_folder,
}


def load_source(cfg: dict) -> ImageSet:
    return SOURCES[cfg["source"]](cfg)  # the schema's enum: the keys of SOURCES


def prepare_dataset(*, cfg: dict, out: str | Path) -> xr.Dataset:
    """Load the configured source and write the dataset store atomically."""
    prov = Provenance("prepare_dataset", cfg)
    data = load_source(cfg)
    data.validate(f"dataset {cfg['name']!r} (source {cfg['source']!r})")
    n = data.images.shape[0]
    coords = {
        "sample": np.arange(n, dtype=np.int64),
        "label": ("sample", data.labels.astype(np.int64)),
        "split": ("sample", data.split.astype("<U5")),
    }
    if data.files is not None:
        coords["file"] = ("sample", np.asarray(data.files, dtype=str))
    ds = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), np.asarray(data.images, dtype=np.float32))},
        coords=coords,
        attrs={
            "name": cfg["name"],
            "source": cfg["source"],
            "classes": json.dumps(data.classes),
            "provenance": as_attr(prov.finish(n_images=n)),
        },
    )
    write_dataset(ds, out, chunks={"image": 1024})
    return ds


@dataclass
class DatasetInfo:
    n_images: int
    channels: int
    image_size: int
    classes: list[str]


def open_dataset(path: str | Path) -> tuple[xr.Dataset, DatasetInfo]:
    """Open a dataset store and check it has the expected layout."""
    ds = open_store(path)
    for name in ("image", "label", "split"):
        if name not in ds.variables:
            raise DataError(f"{path}: dataset store has no {name!r} variable")
    n, c, h, w = ds["image"].shape
    return ds, DatasetInfo(n, c, h, json.loads(ds.attrs.get("classes", "[]")))
