"""Job start-up: table and figure jobs run without torch (``run_job(needs_device=False)``).

Importing torch takes ~3 s on small CPUs, more than most of these jobs' work; a local run of the
tiny workflow has ten of them, and on SLURM they run one after another in one group job. The
method short names they show come from the method classes' decorators without importing them
(:mod:`saliency_fingerprints.method_names`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import REPO

from saliency_fingerprints import jobs

SCRIPTS = REPO / "scripts"


def run_job_call(path: Path) -> ast.Call:
    calls = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_job"
    ]
    assert len(calls) == 1, path
    return calls[0]


def without_device(path: Path) -> bool:
    keywords = {k.arg: k.value for k in run_job_call(path).keywords}
    return "needs_device" in keywords and keywords["needs_device"].value is False


def library_imports(path: Path) -> list[str]:
    return [
        node.module
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ImportFrom) and node.module.startswith("saliency_fingerprints")
    ]


SCRIPT_PATHS = sorted(p for p in SCRIPTS.glob("*.py") if not p.name.startswith("_"))
NO_DEVICE = [p.stem for p in SCRIPT_PATHS if without_device(p)]


def test_exactly_the_scripts_that_use_no_device_run_without_one():
    """A script that uses ``job.device`` asks for one; every other script does not."""
    for path in SCRIPT_PATHS:
        uses_device = "job.device" in path.read_text()
        assert without_device(path) is not uses_device, path.name
    assert {"combine_tables", "plot_heatmap", "map_diagnostics", "prepare_dataset"} <= set(
        NO_DEVICE
    )


def test_jobs_without_a_device_do_not_import_torch():
    """The library modules of every script without a device, imported together in one fresh
    process (one start, not one per script), leave torch unimported."""
    modules = sorted({m for s in NO_DEVICE for m in library_imports(SCRIPTS / f"{s}.py")})
    assert "saliency_fingerprints.tables" in modules and "saliency_fingerprints.plots" in modules
    assert "saliency_fingerprints.backdoor_tables" in modules
    assert loaded_by(modules, prefix="torch") == [], modules


def loaded_by(modules: list[str], prefix: str, then: str = "") -> list[str]:
    """The modules named ``prefix`` or below it that importing ``modules`` (and running the
    code ``then``) loads, in one fresh process."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"{then}\n"
        f"print([m for m in sys.modules if m == {prefix!r} or m.startswith({prefix + '.'!r})])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    return ast.literal_eval(out.strip())


FIGURE_SCRIPTS = [p.stem for p in SCRIPT_PATHS if p.stem.startswith("plot_")]


def test_figure_jobs_do_not_import_scipy_stats():
    """scipy.stats takes 1-2 s to import, more than a figure's work: the figure jobs' library
    modules, and the per-cell means the heatmap draws, leave it unimported (the tables' jobs
    import it when they compute intervals and tests)."""
    modules = sorted({m for s in FIGURE_SCRIPTS for m in library_imports(SCRIPTS / f"{s}.py")})
    assert len(FIGURE_SCRIPTS) >= 3 and "saliency_fingerprints.plots" in modules
    heatmap = (
        "import pandas as pd\n"
        "from saliency_fingerprints.tables import cell_means\n"
        "rows = pd.DataFrame({'experiment': ['e'] * 2, 'variant': ['original'] * 2,\n"
        "    'train_method': ['grad'] * 2, 'test_method': ['grad'] * 2, 'accuracy': [0.5, 0.7],\n"
        "    'chance': [0.5] * 2, 'n_test': [10, 12]})\n"
        "assert cell_means(rows)['accuracy'].iloc[0] == 0.6"
    )
    assert loaded_by(modules, prefix="scipy.stats", then=heatmap) == [], modules


def test_run_job_without_a_device_hands_none_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv(jobs.FAIL_ONCE_ENV, raising=False)
    log = tmp_path / "job.log"
    smk = SimpleNamespace(
        log=[str(log)],
        rule="combine_tables",
        wildcards={},
        input=[],
        output=[],
        params={},
        threads=1,
        config={"compute": {"device": "cuda"}},  # not looked at: no device is chosen
    )
    seen = []
    jobs.run_job(smk, seen.append, needs_device=False)
    assert seen[0].device is None
    assert "device none (this job needs none and imports no torch)" in log.read_text()


def test_short_names_without_importing_the_methods_are_the_registrys():
    from saliency_fingerprints.method_names import short_name, short_names
    from saliency_fingerprints.saliency import SHORT_NAMES

    assert short_names() == SHORT_NAMES
    assert short_name("integrated_gradients") == "IG" and short_name("unknown") == "unknown"
