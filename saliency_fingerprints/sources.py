"""Fetching, verifying and safely extracting dataset archives; finding ImageFolder layouts.

Policy (the "archive" and "folder" dataset sources build on it):

* **Checksums.** An archive is always checked against the sha256 the config gives, *before*
  anything is extracted. A local file (plain path or ``file://`` URL) is hashed in place; an
  ``http(s)://`` download is hashed while it streams into a temporary file, which is renamed into
  ``<download_dir>/<file name>`` only if the hash matches (a cached file with the right hash is
  not downloaded again).
* **Safe extraction.** ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` and ``.zip``
  archives are scanned first: absolute member names, ``..`` components, device files and FIFOs,
  and links (symbolic or hard) that point out of the target stop the run; zip symlink entries
  are refused. Tar archives are then extracted with Python's ``data`` filter where the
  interpreter has it (3.10.12+/3.11.4+), which re-checks every link against the real paths.
* **Atomic extraction.** Members are extracted into a temporary directory next to the target,
  the ImageFolder layout is checked there, and only then is the directory renamed to
  ``<download_dir>/extracted/<sha256 prefix>``. Any failure removes the temporary directory: a
  later run never sees a half-extracted tree. A completed extraction is reused.
* **Layout.** ``<root>/train/<class>/<image>`` and ``<root>/test/<class>/<image>``, where
  ``<root>`` is the archive's top level or its single top-level folder. Class names are the
  sorted folder names and must be identical in both splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ConfigError, DataError

SPLITS = ("train", "test")
# File types PIL decodes that make sense as dataset images (as torchvision's ImageFolder).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".pbm",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
_CHUNK = 1 << 20
log = logging.getLogger(__name__)


# -- locating and verifying ----------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def local_path(url: str) -> Path | None:
    """The file a plain path or ``file://`` URL names; None for http(s) URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"dataset.url {url!r}: a file:// URL must be file:///absolute/path (no host)"
            )
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise ConfigError(
            f"dataset.url {url!r}: unsupported scheme {parsed.scheme!r}; expected http://, "
            "https://, file:///absolute/path or a plain path"
        )
    return Path(url)


def archive_name(url: str) -> str:
    """The archive's file name (for downloads and for choosing the unpacker)."""
    path = urllib.parse.urlparse(url).path if "://" in url else url
    name = PurePosixPath(urllib.parse.unquote(path)).name
    if not name:
        raise ConfigError(f"dataset.url {url!r} does not end in a file name")
    return name


def archive_kind(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    raise ConfigError(
        f"dataset.url: {name!r} is not a supported archive; expected one of "
        f"{', '.join(ARCHIVE_SUFFIXES)}"
    )


def verify(path: Path, expected: str, origin: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{origin}: sha256 mismatch (expected {expected}, got {actual}); the file is corrupt, "
            "truncated or not the one dataset.sha256 names - nothing was extracted"
        )


def fetch(url: str, sha256: str, download_dir: Path, timeout: float = 60.0) -> Path:
    """A verified local copy of the archive at ``url`` (see the module's checksum policy)."""
    path = local_path(url)
    if path is not None:
        if not path.is_file():
            raise DataError(
                f"dataset.url: archive {str(path)!r} not found (relative paths are relative to "
                f"the working directory {os.getcwd()!r})"
            )
        verify(path, sha256, str(path))
        return path
    target = download_dir / archive_name(url)
    if target.is_file() and sha256_file(target) == sha256:
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", url, target)
    tmp = target.with_name(f".{target.name}.download-{os.getpid()}")
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            expected_size = response.headers.get("Content-Length")
            size = 0
            while block := response.read(_CHUNK):
                digest.update(block)
                out.write(block)
                size += len(block)
        if expected_size is not None and size != int(expected_size):
            raise DataError(
                f"{url}: download truncated ({size} of {expected_size} bytes); nothing was kept"
            )
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{url}: sha256 mismatch (expected {sha256}, got {digest.hexdigest()}); the "
                "download is corrupt or not the file dataset.sha256 names - nothing was kept"
            )
        os.replace(tmp, target)
    except urllib.error.HTTPError as err:
        raise DataError(f"{url}: download failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        raise DataError(f"{url}: download failed: {reason}; nothing was kept") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


# -- safe, atomic extraction -------------------------------------------------------------------


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (pure.parts and ":" in pure.parts[0]):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in pure.parts:
        raise DataError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    return pure


def _escapes(link_dir: PurePosixPath, target: str) -> bool:
    """Whether ``target`` (relative to ``link_dir``) leaves the extraction root lexically."""
    if target.startswith(("/", "\\")):
        return True
    depth = 0
    for part in (*link_dir.parts, *PurePosixPath(target.replace("\\", "/")).parts):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def _scan_tar(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        pure = _check_member_name(member.name, archive)
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise DataError(
                f"{archive}: member {member.name!r} is a device file or FIFO; refusing to extract"
            )
        if member.issym() and _escapes(pure.parent, member.linkname):
            raise DataError(
                f"{archive}: symlink {member.name!r} -> {member.linkname!r} points out of the "
                "extraction directory; refusing to extract"
            )
        if member.islnk() and _escapes(PurePosixPath("."), member.linkname):
            raise DataError(
                f"{archive}: hard link {member.name!r} -> {member.linkname!r} points out of the "
                "extraction directory; refusing to extract"
            )
    return members


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = _scan_tar(tar, archive)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # older interpreters: the scan above is the only guard, so refuse every link
            for member in members:
                if member.issym() or member.islnk():
                    raise DataError(
                        f"{archive}: member {member.name!r} is a link; this Python has no "
                        "tarfile data filter, so archives with links are refused"
                    )
            tar.extractall(dest, members=members)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member_name(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(
                    f"{archive}: member {info.filename!r} is a symlink; zip archives with links "
                    "are refused"
                )
            if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise DataError(
                    f"{archive}: member {info.filename!r} is not a regular file or directory; "
                    "refusing to extract"
                )
        bad = zf.testzip()
        if bad is not None:
            raise DataError(f"{archive}: member {bad!r} is corrupt (CRC mismatch)")
        zf.extractall(dest, members=infos)


@contextlib.contextmanager
def _temporary_dir(final: Path) -> Iterator[Path]:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def extract(archive: Path, name: str, sha256: str, download_dir: Path) -> Path:
    """Extract a verified archive into ``<download_dir>/extracted/<sha256[:16]>`` (atomically,
    reusing a completed extraction); returns the ImageFolder root inside it."""
    final = download_dir / "extracted" / sha256[:16]
    if final.is_dir():
        log.info("%s: reusing the extraction in %s", archive, final)
        return find_imagefolder_root(final, str(archive))
    final.parent.mkdir(parents=True, exist_ok=True)
    kind = archive_kind(name)
    log.info("%s: sha256 verified; extracting into %s (once)", archive, final)
    with _temporary_dir(final) as tmp:
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp)
        except DataError:
            raise
        except getattr(tarfile, "FilterError", DataError) as err:  # the data filter refused
            raise DataError(
                f"{archive}: unsafe member, refusing to extract ({type(err).__name__}: {err}); "
                "nothing was kept"
            ) from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise DataError(
                f"{archive}: cannot be extracted as a {kind} archive - truncated or corrupt? "
                f"({type(err).__name__}: {err}); nothing was kept"
            ) from None
        root = find_imagefolder_root(tmp, str(archive))
        relative = root.relative_to(tmp)
        os.replace(tmp, final)
    return final / relative


# -- ImageFolder layout ------------------------------------------------------------------------


@dataclass
class ImageFolderIndex:
    """Every image file of an ImageFolder tree, in a fixed order (split, class, file name)."""

    root: Path
    classes: list[str]
    files: dict[str, list[Path]]  # split -> files
    labels: dict[str, list[int]]  # split -> class index per file


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))),
        key=lambda p: p.name,
    )


def _layout_error(origin: str, detail: str) -> DataError:
    return DataError(
        f"{origin}: not an ImageFolder dataset ({detail}); expected <root>/train/<class>/<image> "
        "and <root>/test/<class>/<image>, with <root> the top level or its single folder"
    )


def find_imagefolder_root(path: Path, origin: str) -> Path:
    """``path`` if it holds ``train/`` and ``test/``; else its single sub-folder if that does."""
    if not path.is_dir():
        raise DataError(f"{origin}: directory {str(path)!r} not found")

    def has_splits(p: Path) -> bool:
        return all((p / split).is_dir() for split in SPLITS)

    if has_splits(path):
        return path
    subdirs = _visible_dirs(path)
    if len(subdirs) == 1 and has_splits(subdirs[0]):
        return subdirs[0]
    seen = ", ".join(p.name for p in subdirs[:10]) or "no folders"
    raise _layout_error(origin, f"found {seen} at the top level")


def index_imagefolder(path: Path, origin: str) -> ImageFolderIndex:
    """Find the layout under ``path`` and list its images; class names are checked to match."""
    root = find_imagefolder_root(path, origin)
    classes: dict[str, list[str]] = {}
    for split in SPLITS:
        classes[split] = [p.name for p in _visible_dirs(root / split)]
        if not classes[split]:
            raise _layout_error(origin, f"{split}/ has no class folders")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(
            f"{origin}: train/ and test/ have different class folders (only in train: "
            f"{only_train or 'none'}; only in test: {only_test or 'none'})"
        )
    names = classes["train"]
    files: dict[str, list[Path]] = {}
    labels: dict[str, list[int]] = {}
    for split in SPLITS:
        files[split], labels[split] = [], []
        for index, name in enumerate(names):
            found = sorted(
                p
                for p in (root / split / name).iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.name.startswith(".")
                and p.is_file()
            )
            if not found:
                raise DataError(
                    f"{origin}: {split}/{name}/ holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            files[split] += found
            labels[split] += [index] * len(found)
    return ImageFolderIndex(root, names, files, labels)
