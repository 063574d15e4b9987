"""envs/pipeline.yaml (for `--sdm conda`) must agree with pyproject.toml's dependency ranges."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs/pipeline.yaml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        for line in dep.get("pip", []) if isinstance(dep, dict) else []:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_in_the_conda_env():
    pins = conda_pins()
    needed = {r.name.lower() for r in project_requirements()}
    # snakemake and its SLURM plugin run the workflow; they are not needed inside a job's env
    missing = needed - set(pins) - {"snakemake", "snakemake-executor-plugin-slurm"}
    assert not missing, f"envs/pipeline.yaml lacks pins for {sorted(missing)}"


@pytest.mark.parametrize("requirement", project_requirements(), ids=lambda r: r.name)
def test_conda_pins_satisfy_the_project_ranges(requirement):
    pins = conda_pins()
    if requirement.name.lower() in pins:
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (
            f"envs/pipeline.yaml pins {requirement.name}=={pins[requirement.name.lower()]}, "
            f"outside pyproject.toml's {requirement.specifier}"
        )


def test_every_rule_names_the_conda_env():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, flags=re.M)
        if rules:
            assert text.count('"../envs/pipeline.yaml"') == len(rules), smk.name
