"""Glue between Snakemake's ``script:`` directive and the library: logging, device, errors.

Each file in ``scripts/`` is a thin entry point::

    from saliency_fingerprints.jobs import run_job
    run_job(snakemake, lambda job: ...)

``run_job`` sends log records to the rule's ``log:`` file (and stderr), picks the device, and turns
a :class:`~saliency_fingerprints.errors.PipelineError` into one clear line and exit status 1.

Where a job runs is logged in its first line: host, ``SLURM_JOB_ID`` (or ``none``), the
``CUDA_VISIBLE_DEVICES`` it was given and the device it uses. A job uses the GPU its scheduler gave
it (SLURM sets ``CUDA_VISIBLE_DEVICES``); when no scheduler chose one and several GPUs are visible
(a workstation, where ``profiles/default`` caps concurrent GPU jobs at the GPU count), it claims a
free one through a lock file. With no usable CUDA device it runs on the CPU and says so.

Fault injection, for testing retries only: if the environment variable
``SALIENCY_FINGERPRINTS_FAIL_ONCE`` is set to comma-separated shell patterns, every job whose log
path (as the rule names it, e.g. ``results/logs/compute_saliency/grad/cnn2-seed0.log``) matches
one fails its first attempt (exit 1) before doing any work, leaving a marker file
``<log>.failed-once`` beside its log; the next attempt sees the marker and runs normally.
``*/compute_saliency/*`` picks every job of a rule. Unset (the normal case) it does nothing.
"""

from __future__ import annotations

import fcntl
import fnmatch
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import PipelineError
from .store import remove_empty_store_folders

if TYPE_CHECKING:
    import torch


@dataclass
class Job:
    """What a job needs from Snakemake's ``snakemake`` object, in plain form."""

    input: Any
    output: Any
    params: Any
    wildcards: Any
    threads: int
    device: torch.device | None  # None in a job without one (``run_job(needs_device=False)``)


def setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


FAIL_ONCE_ENV = "SALIENCY_FINGERPRINTS_FAIL_ONCE"
GPU_LOCK_DIR = Path(tempfile.gettempdir()) / "saliency-fingerprints-gpu-locks"
_gpu_lock = None  # the claimed GPU's lock file, held open for the life of the job's process


def inject_failure(rule: str, log_file: str | None) -> None:
    """The retry-test hook described in the module docstring; inert unless its variable is set."""
    patterns = [p.strip() for p in os.environ.get(FAIL_ONCE_ENV, "").split(",") if p.strip()]
    if not patterns or not log_file:
        return
    if not any(fnmatch.fnmatchcase(log_file, pattern) for pattern in patterns):
        return
    marker = Path(f"{log_file}.failed-once")
    if marker.exists():
        logging.getLogger("saliency_fingerprints.job").info(
            "%s: %s exists, so this is a retry: running normally", FAIL_ONCE_ENV, marker
        )
        return
    marker.write_text(f"rule {rule} failed once on purpose ({FAIL_ONCE_ENV})\n")
    raise PipelineError(f"injected failure: first attempt of rule {rule} ({FAIL_ONCE_ENV} is set)")


def claim_gpu(n_devices: int, lock_dir: Path = GPU_LOCK_DIR) -> tuple[int, IO] | None:
    """A GPU that no other job on this machine holds: its index and its open lock file (the
    claim lasts while the file stays open), or None when every GPU is taken."""
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_dir.chmod(0o1777)  # GPUs are shared by every user of the machine
    for index in range(n_devices):
        path = lock_dir / f"gpu{index}.lock"
        try:
            handle = open(path, "a")  # kept open, and so locked, when claimed
        except OSError as err:
            raise PipelineError(f"GPU lock file {path}: {err}") from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return index, handle
    return None


def place_on_gpu(device: torch.device) -> None:
    """On a machine with several visible GPUs that no scheduler assigned (no SLURM job), make
    a free one this process's current CUDA device."""
    if device.type != "cuda" or "SLURM_JOB_ID" in os.environ:
        return
    import torch

    n_devices = torch.cuda.device_count()
    if n_devices < 2:
        return
    global _gpu_lock
    claim = claim_gpu(n_devices)
    if claim is None:
        logging.getLogger("saliency_fingerprints.job").warning(
            "all %d GPUs are held by other jobs; sharing GPU 0 (limit GPU jobs with the "
            "`gpu` resource, see profiles/default)",
            n_devices,
        )
        return
    index, _gpu_lock = claim
    torch.cuda.set_device(index)


def where_running(device: torch.device | None) -> str:
    """Host, SLURM job and GPUs given to this job, and the device it uses, for its log."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device is None:
        used = "none (this job needs none and imports no torch)"
    else:
        import torch

        from .runtime import describe_device

        used = describe_device(device)
        if device.type == "cpu" and visible not in (None, "") and not torch.cuda.is_available():
            used += " (a GPU was given but torch sees no usable CUDA device: CPU fallback)"
    return (
        f"host {platform.node()}, SLURM_JOB_ID={os.environ.get('SLURM_JOB_ID', 'none')}, "
        f"CUDA_VISIBLE_DEVICES={'unset' if visible is None else visible}, device {used}"
    )


def run_job(smk, body: Callable[[Job], Any], *, needs_device: bool = True) -> None:
    """Run ``body`` as the job of Snakemake's ``smk`` object. A job that uses no device (the
    tables, the figures, the dataset's preparation) passes ``needs_device=False``: it gets
    ``device=None`` and never imports torch (~3 s of its start)."""
    log_file = smk.log[0] if len(smk.log) else None
    setup_logging(log_file)
    log = logging.getLogger("saliency_fingerprints.job")
    try:
        device = None
        if needs_device:
            import torch

            from .runtime import select_device

            device = select_device(smk.config["compute"]["device"])  # schema-filled
            place_on_gpu(device)
            torch.set_num_threads(max(1, int(smk.threads)))
        log.info("rule %s, wildcards %s, %s", smk.rule, dict(smk.wildcards), where_running(device))
        inject_failure(smk.rule, log_file)
        body(Job(smk.input, smk.output, smk.params, smk.wildcards, int(smk.threads), device))
    except PipelineError as err:
        log.error("%s", err)
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        remove_empty_store_folders(smk.output)  # a failed job's, made by Snakemake before it ran
