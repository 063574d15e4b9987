"""Glue between Snakemake's ``script:`` directive and the library: logging, device, errors.

Each file in ``scripts/`` is a thin entry point::

    from saliency_fingerprints.jobs import run_job
    run_job(snakemake, lambda job: ...)

``run_job`` sends log records to the rule's ``log:`` file (and stderr), picks the device, and turns
a :class:`~saliency_fingerprints.errors.PipelineError` into one clear line and exit status 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import PipelineError
from .runtime import describe_device, select_device


@dataclass
class Job:
    """What a job needs from Snakemake's ``snakemake`` object, in plain form."""

    input: Any
    output: Any
    params: Any
    wildcards: Any
    threads: int
    device: torch.device


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


def run_job(smk, body: Callable[[Job], Any]) -> None:
    setup_logging(smk.log[0] if len(smk.log) else None)
    log = logging.getLogger("saliency_fingerprints.job")
    try:
        compute = smk.config.get("compute", {})
        device = select_device(compute.get("device", "auto"))
        torch.set_num_threads(max(1, int(smk.threads)))
        log.info(
            "rule %s, wildcards %s, device %s",
            smk.rule,
            dict(smk.wildcards),
            describe_device(device),
        )
        body(Job(smk.input, smk.output, smk.params, smk.wildcards, int(smk.threads), device))
    except PipelineError as err:
        log.error("%s", err)
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(1)
