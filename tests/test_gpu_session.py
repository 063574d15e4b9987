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
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import run_workflow, tiny_config

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


def test_default_priority_is_the_paper_presets() -> None:
    """The outputs the session makes first exist in the paper preset (a renamed experiment or
    method would otherwise stop the one GPU session at its start), and they are 32 jobs with
    everything they need: primaries of both architectures, map stores of every method of the
    preset on each, two secondaries."""
    env = {**os.environ, "LIST_PRIORITY": "1"}
    listed = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    targets = listed.stdout.split()
    paper = REPO / "config" / "paper.yaml"
    results = yaml.safe_load(paper.read_text())["results"]
    workdir = Path(tempfile.mkdtemp())  # the preset's own source: no archive is read in a dry run
    try:
        proc = run_workflow(
            workdir,
            None,
            "--configfile",
            str(paper),
            "-n",
            "--prioritize",
            *(f"{results}/{t}" for t in targets),
        )
    finally:
        shutil.rmtree(workdir)
    starts = re.split(r"\n(?:local)?rule ", proc.stdout)[1:]
    first = [b.split(":", 1)[0] for b in starts if "priority: highest" in b]
    counts = {rule: first.count(rule) for rule in set(first)}
    assert counts == {
        "prepare_dataset": 1,
        "train_primary": 12,
        "compute_saliency": 17,
        "train_secondary": 2,
    }
    methods = {t.split("/")[2] for t in targets if t.startswith("saliency/")}
    assert methods | {"grad"} == set(yaml.safe_load(paper.read_text())["methods"])
