"""Shared fixtures: a tiny config and a helper that runs the workflow in a temporary directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on this repository's Snakefile in ``workdir`` with ``cfg`` as the config
    (written to ``workdir/config.yaml``); extra ``args`` go to the command line; ``env``: the
    environment (default: this process's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if cfg is not None:
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd += ["--configfile", str(config_path)]
    cmd += ["--profile", profile or str(REPO / "profiles" / "default"), "--cores", str(cores)]
    cmd += list(args)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
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


def _requests(item: pytest.Item, run: str) -> bool:
    """Whether a test uses the session's ``run`` (``tiny_run`` or ``slurm_run``): as a fixture,
    or through ``request.getfixturevalue`` in a module that lists it in ``REQUESTS_RUNS``."""
    return run in getattr(item, "fixturenames", ()) or run in getattr(
        getattr(item, "module", None), "REQUESTS_RUNS", ()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that need no workflow run first, then those that use ``tiny_run``, then those that
    use ``slurm_run`` (each module kept whole, in its order): the runs, started in the background
    (:func:`_background_runs`), are done by the time the tests that read them come."""

    def rank(item: pytest.Item) -> int:
        return 2 if _requests(item, "slurm_run") else 1 if _requests(item, "tiny_run") else 0

    module_rank: dict[object, int] = {}
    for item in items:
        module = getattr(item, "module", None)
        module_rank[module] = max(module_rank.get(module, 0), rank(item))
    items.sort(key=lambda item: module_rank[getattr(item, "module", None)])


def _tiny_run(workdir: Path, env: dict[str, str] | None = None) -> Path:
    run_workflow(workdir, tiny_config(), env=env)
    return workdir


@pytest.fixture(scope="session", autouse=True)
def _background_runs(request, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The session's two workflow runs, started in one background thread as the session starts,
    one after the other, where a selected test uses them (:func:`_requests`): the local
    ``tiny_run``, then ``slurm_run`` (tests/slurm_cluster.py). Tests run one at a time and a
    SLURM run waits on status polls, so each alone leaves the 2 CPUs half idle. Both get this
    process's environment as the session starts, whatever a test sets while they run."""
    from slurm_cluster import missing_slurm
    from slurm_cluster import slurm_run as run_on_slurm

    def wanted(name: str) -> bool:
        return any(_requests(item, name) for item in request.session.items)

    env = dict(os.environ)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow-run")
    runs = {}
    if wanted("tiny_run"):
        runs["tiny_run"] = pool.submit(_tiny_run, tmp_path_factory.mktemp("tiny_run"), env)
    if wanted("slurm_run") and missing_slurm() is None:
        runs["slurm_run"] = pool.submit(
            run_on_slurm,
            tmp_path_factory.mktemp("slurm_cluster"),
            tmp_path_factory.mktemp("slurm_run"),
            env,
        )
    yield runs
    pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def tiny_run(_background_runs, tmp_path_factory) -> Path:
    """The tiny workflow run once per test session; tests must not modify it."""
    if "tiny_run" in _background_runs:
        return _background_runs["tiny_run"].result()
    return _tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def slurm_run(_background_runs, tmp_path_factory):
    """The tiny workflow on a local SLURM cluster, once per session (tests/slurm_cluster.py);
    skipped, with the reason, where the cluster cannot start."""
    from slurm_cluster import missing_slurm
    from slurm_cluster import slurm_run as run_on_slurm

    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    try:
        if "slurm_run" in _background_runs:
            return _background_runs["slurm_run"].result()
        return run_on_slurm(
            tmp_path_factory.mktemp("slurm_cluster"), tmp_path_factory.mktemp("slurm_run")
        )
    except RuntimeError as err:
        pytest.fail(str(err))
