"""The SLURM and workstation profiles, and the tiny workflow on a real single-node SLURM cluster.

The cluster tests use the session's ``slurm_run`` (tests/slurm_cluster.py): it starts
`cluster/local_slurm.sh` (Debian's slurmctld, slurmd and munge, a fake GPU GRES), runs the tiny
workflow with

    snakemake --workflow-profile profiles/slurm --profile profiles/slurm-ci

and stops the cluster; tests/test_determinism.py compares that run with the local one. They are
skipped, with the reason, when the packages are not installed or the tests do not run as root.
The other tests here need no cluster.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, planned_jobs, tiny_config
from slurm_cluster import CI_PROFILE, RETRIED_LOG, SLURM_PROFILE, SlurmRun

from saliency_fingerprints import jobs

GPU_RULES = {
    "train_primary",
    "compute_saliency",
    "train_secondary",
    "cross_evaluate",
    "train_random_label_primary",
    "sanity_check",
}
RETRIED_COMMENT = "rule_sanity_check_wildcards_grad_cnn2_0_"  # the plugin's sbatch --comment


# -- profiles, no cluster needed ------------------------------------------------------------------
def profile_keys(profile: Path) -> dict:
    return yaml.safe_load((profile / "config.yaml").read_text())


# Rules that profiles/slurm sends together as one SLURM job.
REPORT_GROUP = {r for r, g in profile_keys(SLURM_PROFILE)["groups"].items() if g == "report"}


@pytest.fixture
def parsed_args(monkeypatch):
    """Snakemake's own reading of a command line and its profiles, from the repository root as
    a user would run it; ``env`` is seen by the profiles' YTE expressions."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)

    def parse(*argv: str, env: dict | None = None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        _, args = parse_args(list(argv))
        return {key: str(value) for key, value in vars(args).items()}

    return parse


def test_ci_overlay_only_adds_keys():
    """A --profile ranks below the workflow profile key by key: an overlay key that
    profiles/slurm also sets would be silently ignored."""
    slurm, ci = profile_keys(SLURM_PROFILE), profile_keys(CI_PROFILE)
    assert slurm["executor"] == "slurm"
    assert not set(ci) & set(slurm), f"ignored overlay keys: {set(ci) & set(slurm)}"


def test_slurm_profile_replaces_the_workstation_profile(parsed_args):
    args = parsed_args(
        "--workflow-profile", "profiles/slurm", "--profile", "profiles/slurm-ci", "-n"
    )
    assert args["executor"] == "slurm"
    assert args["retries"] == "2"
    assert args["slurm_status_command"] == "squeue"  # from the overlay
    assert "slurm_account" in args["default_resources"]
    assert args["resources"] in ("{}", "None")  # no workstation `gpu` cap on the cluster
    assert "report" in args["groups"]


@pytest.mark.parametrize(("visible", "n_gpus"), [("0,1", 2), ("", 0), ("3", 1)])
def test_workstation_profile_caps_gpu_jobs_at_the_gpu_count(parsed_args, visible, n_gpus):
    args = parsed_args("-n", env={"CUDA_VISIBLE_DEVICES": visible})
    assert args["resources"] == f"{{'gpu': Resource(\"gpu\", {n_gpus})}}"
    assert args["retries"] == "1" and args["keep_going"] == "True"


# -- job placement and the fault-injection hook, no cluster needed --------------------------------
def test_gpu_claims_are_exclusive_until_released(tmp_path):
    first = jobs.claim_gpu(2, tmp_path)
    second = jobs.claim_gpu(2, tmp_path)
    assert first[0] == 0 and second[0] == 1
    assert jobs.claim_gpu(2, tmp_path) is None
    first[1].close()
    again = jobs.claim_gpu(2, tmp_path)
    assert again is not None and again[0] == 0
    second[1].close()
    again[1].close()


def test_failure_injection_is_inert_unless_set(tmp_path, monkeypatch):
    log = str(tmp_path / "logs" / "train_primary" / "cnn2-seed0.log")
    (tmp_path / "logs" / "train_primary").mkdir(parents=True)
    monkeypatch.delenv(jobs.FAIL_ONCE_ENV, raising=False)
    jobs.inject_failure("train_primary", log)
    monkeypatch.setenv(jobs.FAIL_ONCE_ENV, "*/compute_saliency/*,*/cnn2-seed1.log")
    jobs.inject_failure("train_primary", log)
    assert not list((tmp_path / "logs" / "train_primary").iterdir())
    monkeypatch.setenv(jobs.FAIL_ONCE_ENV, "*/compute_saliency/*, */train_primary/*")
    with pytest.raises(jobs.PipelineError, match="injected failure"):
        jobs.inject_failure("train_primary", log)
    assert Path(f"{log}.failed-once").exists()
    jobs.inject_failure("train_primary", log)  # the retry runs


def test_log_says_where_the_job_ran(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    line = jobs.where_running(torch.device("cpu"))
    assert "SLURM_JOB_ID=42" in line and "CUDA_VISIBLE_DEVICES=0" in line
    assert line.count("device cpu") == 1
    if not torch.cuda.is_available():
        assert "CPU fallback" in line
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "SLURM_JOB_ID=none, CUDA_VISIBLE_DEVICES=unset" in jobs.where_running(
        torch.device("cpu")
    )


# -- the tiny workflow on a real SLURM cluster (tests/slurm_cluster.py, a session fixture) --


def job_logs(workdir: Path) -> dict[str, dict]:
    """First line of every rule log: rule, SLURM_JOB_ID, CUDA_VISIBLE_DEVICES, device."""
    pattern = re.compile(
        r"rule (\w+), wildcards .*, SLURM_JOB_ID=(\S+), CUDA_VISIBLE_DEVICES=(\S*), device (.+)$"
    )
    logs = {}
    for path in sorted((workdir / "results" / "logs").rglob("*.log")):
        first = path.read_text().splitlines()[0]
        match = pattern.search(first)
        assert match, f"{path}: no placement line in {first!r}"
        rule, job_id, visible, device = match.groups()
        logs[str(path)] = {"rule": rule, "job_id": job_id, "visible": visible, "device": device}
    return logs


def assert_run_succeeded(run: SlurmRun) -> None:
    assert run.proc.returncode == 0, (
        f"snakemake on SLURM failed ({run.proc.returncode})\n{run.proc.stderr[-8000:]}"
    )


@pytest.mark.slurm
def test_every_job_ran_as_a_slurm_job(slurm_run, tmp_path):
    assert_run_succeeded(slurm_run)
    expected = planned_jobs(tmp_path / "plan", tiny_config())
    expected.pop("all")
    logs = job_logs(slurm_run.workdir)
    ran = {}
    for log in logs.values():
        ran[log["rule"]] = ran.get(log["rule"], 0) + 1
    assert ran == expected
    assert all(log["job_id"].isdigit() for log in logs.values()), logs
    # ...and those ids are this run's SLURM jobs, all completed in the end.
    submitted = {job.id: job for job in slurm_run.jobs}
    final_ids = {int(log["job_id"]) for log in logs.values()}
    assert final_ids <= set(submitted)
    assert all(submitted[i].state == "COMPLETED" for i in final_ids)
    # The report group (the table and the figures) went as one SLURM job, the rest one each.
    report = [log for log in logs.values() if log["rule"] in REPORT_GROUP]
    assert len({log["job_id"] for log in report}) == 1
    assert len(final_ids) == sum(expected.values()) - len(report) + 1


@pytest.mark.slurm
def test_gpu_rules_asked_for_a_gpu_and_got_one(slurm_run):
    assert_run_succeeded(slurm_run)
    submitted = {job.id: job for job in slurm_run.jobs}
    for path, log in job_logs(slurm_run.workdir).items():
        job = submitted[int(log["job_id"])]
        if log["rule"] in GPU_RULES:
            assert job.gpu_request and "gpu:1" in job.gpu_request, (path, job)
            assert log["visible"] not in ("unset", ""), (path, log)
            expected = "cuda" if torch.cuda.is_available() else "cpu"
            assert log["device"].startswith(expected), (path, log)
        else:
            assert job.gpu_request is None, (path, job)
            assert log["visible"] == "unset", (path, log)
    # The device the log names is the one in the output's provenance.
    workdir = slurm_run.workdir
    metrics = json.loads((workdir / "results/primaries/cnn2-seed1/metrics.json").read_text())
    log = job_logs(workdir)[str(workdir / "results/logs/train_primary/cnn2-seed1.log")]
    assert log["device"].startswith(metrics["provenance"]["device"])


@pytest.mark.slurm
def test_table_equals_the_local_run(slurm_run, tiny_run):
    assert_run_succeeded(slurm_run)
    table = "results/tables/cross_evaluation.csv"
    assert (slurm_run.workdir / table).read_bytes() == (tiny_run / table).read_bytes()


@pytest.mark.slurm
def test_failed_job_is_retried_with_more_memory_and_time(slurm_run):
    assert_run_succeeded(slurm_run)
    attempts = [job for job in slurm_run.jobs if job.comment == RETRIED_COMMENT]
    assert len(attempts) == 2, attempts
    first, retry = attempts
    assert (first.state, retry.state) == ("FAILED", "COMPLETED")
    assert retry.mem_mb == 2 * first.mem_mb
    assert minutes(retry.time_limit) == 2 * minutes(first.time_limit)
    assert first.gpu_request == retry.gpu_request == "gres:gpu:1"
    assert (slurm_run.workdir / f"{RETRIED_LOG}.failed-once").exists()
    log = (slurm_run.workdir / RETRIED_LOG).read_text()
    assert "so this is a retry: running normally" in log
    # Nothing else failed.
    assert all(job.state == "COMPLETED" for job in slurm_run.jobs if job is not first)


@pytest.mark.slurm
def test_slurm_run_is_complete_and_idempotent(slurm_run):
    """A second dry run of the finished SLURM run has nothing to do."""
    assert_run_succeeded(slurm_run)
    assert planned_jobs(slurm_run.workdir, tiny_config()) == {}


def minutes(limit: str) -> int:
    """SLURM's [D-]HH:MM:SS in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins
