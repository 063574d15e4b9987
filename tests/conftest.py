"""Shared fixtures: a tiny config and a helper that runs the workflow in a temporary directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def load_default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def with_defaults(block: str, cfg: dict | None = None, **keys) -> dict:
    """Top-level config block ``block`` (``dataset``, ``saliency``, ``primary_training``, ...) as
    schema validation hands it to a job: ``cfg`` and ``keys`` over the schema's defaults."""
    from saliency_fingerprints.configuration import schema_defaults

    return {**schema_defaults("properties", block), **(cfg or {}), **keys}


def tiny_config(sanity: bool = True) -> dict:
    """The default experiment shrunk to run in well under a minute on 2 CPU cores; without its
    sanity checks if not ``sanity`` (tests of how jobs run, not of what they compute)."""
    cfg = load_default_config()
    cfg["primary_training"].update(epochs=3)
    cfg["saliency"].update(max_images=240, chunk_size=64)
    cfg["methods"]["smoothgrad"].update(n_samples=4)
    cfg["methods"]["integrated_gradients"].update(n_steps=4)
    cfg["secondary"].update(epochs=10, batch_size=32)
    # replicates: 2, on disjoint primary sets in two_cnn2 (cnn2 seeds {0, 1} and {2, 3}); the
    # true-class experiment with Grad alone and one replicate (the target path, cheaply)
    cfg["replicates"].update(n=2)
    cfg["experiments"]["two_cnn2_true_class"] = {
        "description": "The same primaries, every map explaining the image's true label.",
        "primaries": [{"architecture": "cnn2", "seeds": [0, 1]}],
        "methods": ["grad"],
        "target": "true",
        "replicates": {"n": 1},
    }
    cfg["plots"].update(map_grid_images=3, dpi=60)
    cfg["sanity_checks"].update(n_images=40, methods=["grad", "smoothgrad", "integrated_gradients"])
    cfg["sanity_checks"]["random_labels"].update(epochs=2)
    if not sanity:
        del cfg["sanity_checks"]
    # the default config's studies are planned in tests/test_studies.py, not run here
    cfg.pop("studies", None)
    return cfg


def run_workflow(
    workdir: Path,
    cfg: dict | None,
    *args: str,
    check: bool = True,
    cores: int = 2,
    profile: str | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on this repository's Snakefile in ``workdir`` with ``cfg`` as the config
    (written to ``workdir/config.yaml``); extra ``args`` go to the command line."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if cfg is not None:
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd += ["--configfile", str(config_path)]
    cmd += ["--profile", profile or str(REPO / "profiles" / "default"), "--cores", str(cores)]
    cmd += list(args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(workdir: Path, cfg: dict) -> dict[str, int]:
    """Job counts per rule that a dry run plans (``{}`` when there is nothing to do)."""
    return job_counts(run_workflow(workdir, cfg, "-n", "--quiet", "rules"))


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule in the output of ``snakemake -n --quiet rules``."""
    counts: dict[str, int] = {}
    lines = (proc.stdout + proc.stderr).splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("job") and "count" in line:
            for row in lines[i + 2 :]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    break
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            break
    return counts


@pytest.fixture
def tiny_cfg() -> dict:
    return copy.deepcopy(tiny_config())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny workflow run once per test session; tests must not modify it."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    run_workflow(workdir, tiny_config())
    return workdir


@pytest.fixture(scope="session")
def slurm_run(tmp_path_factory):
    """The tiny workflow on a local SLURM cluster, once per session (tests/slurm_cluster.py);
    skipped, with the reason, where the cluster cannot start."""
    from slurm_cluster import slurm_run as run_on_slurm

    yield from run_on_slurm(tmp_path_factory)
