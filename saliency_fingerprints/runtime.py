"""Device choice, seeding and determinism, shared by every job."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` takes the GPU the job was given (``CUDA_VISIBLE_DEVICES``), else the CPU."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("compute.device is 'cuda' but no CUDA device is visible to this job")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        return f"cuda:{torch.cuda.get_device_name(device)} (CUDA_VISIBLE_DEVICES={visible})"
    return f"cpu ({torch.get_num_threads()} threads)"


def set_determinism(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_kernels()
    torch.backends.cudnn.benchmark = False


def deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of
    ``torch._inductor``: the public call imports the compiler stack (TorchDynamo, ~2.7 s of
    every job's start on these CPUs, more than a small job's work) only to set Inductor's
    ``deterministic`` flag, and nothing here compiles. Where Inductor is already loaded (a
    caller that compiles), the public call sets both."""
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def seed_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator whose stream depends only on ``keys`` (e.g. seed and sample index)."""
    # SeedSequence mixes the keys well; two different key tuples give unrelated streams.
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    generator = torch.Generator(device=device)
    generator.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    return generator
