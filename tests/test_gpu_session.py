"""benchmarks/gpu_session.sh, the one-command GPU session, run on the CPU: what it brings back
fits the device tool's limits (at most 8 files, no folders), and its summary has every section.
Slow (a benchmark and a workflow run, ~5 min on 2 cores): run with ``-m slow``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
FIRST = "experiments/two_cnn2_true_class/secondaries/grad/original/metrics.json"


@pytest.mark.slow
def test_session_script_on_cpu(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(
        REPO,
        project,
        ignore=shutil.ignore_patterns(".venv", ".git", "results*", ".snakemake", ".gpu-bundle"),
    )
    config = project / "config" / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(), "results": "results/tiny"}))
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PRESET": "config/tiny.yaml",
        "BENCH_ARGS": "--quick --repeats 1",
        "PYTHON": sys.executable,
        "OUT": str(out),
        "BUDGET_S": "1200",
        "PRIORITY": FIRST,
    }
    run = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"], cwd=project, env=env, timeout=1500, check=False
    )
    assert run.returncode == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.json", "logs.tar.gz", "results.tar.gz", "summary.md"]
    assert all(p.is_file() for p in out.iterdir())  # flat: the device tool brings back 2 levels
    summary = (out / "summary.md").read_text()
    # the CUDA-only tests were found (and skipped here, on the CPU)
    assert "- GPU tests: exit 0 (8 skipped" in summary
    for part in (
        "- benchmark: exit 0",
        "- workflow (config/tiny.yaml): exit 0",
        "Stage times",
        "Stage rates",
        "Planned work",
        "At the rates measured in results/tiny: ",
        "it includes each job's time outside its own timing, per job: train_primary",
        "| train_secondary |",
        f"- made first (--prioritize, under results/tiny): {FIRST}",
    ):
        assert part in summary, part
    # the prioritised secondary is the first secondary to start, at the highest priority
    with tarfile.open(out / "logs.tar.gz") as logs:
        log = logs.extractfile("logs/paper.log").read().decode()
    starts = re.split(r"\n(?:local)?rule ", log)[1:]  # one block per job started
    blocks = [b for b in starts if b.startswith("train_secondary:")]
    assert blocks, "no secondary started"
    assert "two_cnn2_true_class/secondaries/grad/original" in blocks[0]
    assert "priority: highest" in blocks[0]
