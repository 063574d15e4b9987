"""A real single-node SLURM cluster (cluster/local_slurm.sh) running the tiny workflow once per
test session: tests/test_slurm.py checks how its jobs were dispatched, and tests/test_determinism.py
uses it as the second, independent run that it compares with the session's local ``tiny_run``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, run_workflow, tiny_config

from saliency_fingerprints import jobs

SCRIPT = REPO / "cluster" / "local_slurm.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
CI_PROFILE = REPO / "profiles" / "slurm-ci"
# One job made to fail once (jobs.FAIL_ONCE_ENV): a GPU rule off the critical path (the Grad
# sanity check, whose only consumer is the last, report job), so that its retry overlaps the
# secondaries' training instead of holding back a primary's maps (~60 s of the run here).
RETRIED_LOG = "results/logs/sanity_check/grad/cnn2-seed0.log"
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "mungekey")


@dataclass
class SlurmJob:
    id: int
    name: str
    state: str
    comment: str
    mem_mb: int
    time_limit: str
    gpu_request: str | None


@dataclass
class SlurmRun:
    workdir: Path
    proc: subprocess.CompletedProcess
    jobs: list[SlurmJob]  # every SLURM job this run submitted, oldest first


def missing_slurm() -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        return (
            f"Debian's SLURM packages are not installed (no {', '.join(missing)}): "
            "apt-get install -y slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs jobs, mknod makes fake GPUs)"
    return None


def scontrol_jobs(run_name: str, env: dict[str, str]) -> list[SlurmJob]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True, env=env
    ).stdout

    def field(line: str, key: str) -> str | None:
        match = re.search(rf"(?:^| ){key}=(\S+)", line)
        return match.group(1) if match else None

    found = []
    for line in out.splitlines():
        if field(line, "JobName") != run_name:
            continue
        found.append(
            SlurmJob(
                id=int(field(line, "JobId")),
                name=run_name,
                state=field(line, "JobState"),
                comment=field(line, "Comment") or "",
                mem_mb=int(field(line, "MinMemoryNode").rstrip("M")),
                time_limit=field(line, "TimeLimit"),
                gpu_request=field(line, "TresPerJob"),
            )
        )
    return sorted(found, key=lambda job: job.id)


def slurm_run(state: Path, workdir: Path, env: dict[str, str] | None = None) -> SlurmRun:
    """The tiny workflow (``tiny_config()``, sanity checks included) run on a fresh local SLURM
    cluster (its state in ``state``), one job failing once on purpose; the cluster is stopped
    before this returns. Everything the run needs goes into its environment (``env``, default
    this process's), none into this process's, so that it may run in a thread beside other
    tests (tests/conftest.py)."""
    # 8 advertised CPUs and fake GPUs on a small machine: the six saliency and six secondary jobs
    # each go in one wave instead of three (fewer status-poll waits).
    env = {**(os.environ if env is None else env), "LOCAL_SLURM_CPUS": "8", "LOCAL_SLURM_GPUS": "8"}
    start = subprocess.run(
        ["bash", str(SCRIPT), "start", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if start.returncode != 0:
        raise RuntimeError(f"local SLURM cluster did not start:\n{start.stderr}")
    exports = dict(
        shlex.split(line)[1].split("=", 1)
        for line in start.stdout.splitlines()
        if line.startswith("export ")
    )
    env = {**env, "SLURM_CONF": exports["SLURM_CONF"], "PATH": exports["PATH"]}
    try:
        proc = run_workflow(
            workdir,
            tiny_config(),
            "--workflow-profile",
            str(SLURM_PROFILE),
            profile=str(CI_PROFILE),
            check=False,
            timeout=1500,  # it shares the 2 CPUs with the rest of the suite
            env={**env, jobs.FAIL_ONCE_ENV: f"*{RETRIED_LOG}"},
        )
        run_id = re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr)
        slurm_jobs = scontrol_jobs(run_id.group(1), env) if run_id else []
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], timeout=120, check=False, env=env)
    return SlurmRun(workdir, proc, slurm_jobs)
