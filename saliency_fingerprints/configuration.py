"""Config checks behind ``rules/common.smk``: one line per problem, naming the key and what was
expected.

Snakemake's own ``validate`` prints the whole schema on an error; :func:`check_schema` reports
only the most relevant error, as ``<key>: got <value>; expected <what>``. The cross-key checks a
JSON schema cannot express (:func:`check_experiments`) and the checks on the filesystem
(:func:`check_results_writable`, :func:`check_dataset_files`) raise the same kind of
:class:`~saliency_fingerprints.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import jsonschema
import yaml

from .errors import ConfigError

_COMPARISONS = {
    "minimum": ">=",
    "exclusiveMinimum": ">",
    "maximum": "<=",
    "exclusiveMaximum": "<",
}


def key_path(parts: Iterable[str | int]) -> str:
    """A config location as users write it: ``experiments.two_cnn2.primaries[0].seeds``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def expectation(error: jsonschema.ValidationError) -> str | None:
    """What a failed schema keyword asked for, in words (None if there is no short way)."""
    kind, value = error.validator, error.validator_value
    if kind == "enum":
        return "one of: " + ", ".join(str(v) for v in value)
    if kind == "const":
        return repr(value)
    if kind == "type":
        return f"type {' or '.join(value) if isinstance(value, list) else value}"
    if kind in _COMPARISONS:
        return f"a number {_COMPARISONS[kind]} {value}"
    if kind == "minItems":
        return f"at least {value} item(s)"
    if kind == "minProperties":
        return f"at least {value} entries"
    if kind == "pattern":
        return f"a string matching {value}"
    if kind == "minLength":
        return f"a string of at least {value} character(s)"
    if kind in ("anyOf", "oneOf"):  # one expectation per alternative
        branches: dict = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        words = [expectation(jsonschema.exceptions.best_match(b)) for b in branches.values()]
        if words and all(words):
            return " or ".join(words)
    return None


def schema_message(error: jsonschema.ValidationError) -> str:
    """One line for a jsonschema error: the key, what it holds, what was expected."""
    where, kind, value = key_path(error.absolute_path), error.validator, error.validator_value
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        prefix = "" if where == "(top level)" else f"{where}."
        return (
            f"{prefix}{extra[0] if extra else '?'}: unknown key; expected one of: "
            f"{', '.join(allowed)}"
        )
    if kind == "required":
        missing = [k for k in value if k not in error.instance]
        return f"{where}: missing required key {missing[0] if missing else value!r}"
    if kind == "uniqueItems":
        dups = sorted({str(v) for v in error.instance if error.instance.count(v) > 1})
        return f"{where}: {', '.join(dups)} listed more than once; expected each item once"
    expected = expectation(error)
    if expected is None:
        return f"{where}: {error.message}"
    got = repr(error.instance)
    if kind == "minItems":
        got = f"{len(error.instance)} item(s)"
    elif kind == "minProperties":
        got = f"{len(error.instance)} entries"
    return f"{where}: got {got}; expected {expected}"


def check_schema(cfg: Mapping, schema: Mapping | str | Path) -> None:
    """Raise :class:`ConfigError` with the most relevant schema error of ``cfg`` in one line.

    ``schema`` is the schema itself or the path of its YAML file.
    """
    if not isinstance(schema, Mapping):
        schema = yaml.safe_load(Path(schema).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is not None:
        raise ConfigError(schema_message(error))


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``base`` updated recursively with ``override`` (neither is modified)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def canonical(value):
    """``value`` with the keys of every mapping in it sorted, recursively: the form of a rule's
    ``params`` entry. Lists and tuples keep their order, which is meaningful there.

    Snakemake reruns a job when a params entry's ``repr`` differs from the one it recorded for the
    job's outputs (``--rerun-triggers params``; ``Persistence._serialize_param`` in
    snakemake/persistence.py), and a dict's ``repr`` lists its keys in insertion order: the same
    config with its keys in another order (``yaml.safe_dump`` sorts them) would rerun every job.
    Jobs see the same sorted dicts, so what they compute cannot depend on that order either."""
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (str(k), type(k).__name__))
        return {k: canonical(value[k]) for k in keys}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, tuple):
        return tuple(canonical(v) for v in value)
    return value


def primary_name(architecture: str, seed: int) -> str:
    """The name of a primary in paths and in the ``primary`` coordinate of map stores."""
    return f"{architecture}-seed{seed}"


def primary_pairs(groups: Iterable[Mapping]) -> list[tuple[str, int]]:
    """``[{architecture, seeds}, ...]`` as (architecture, seed) pairs, in the listed order."""
    return [(group["architecture"], int(seed)) for group in groups for seed in group["seeds"]]


def replicate_settings(config: Mapping, experiment: str) -> dict:
    """The experiment's ``replicates`` block over the global one (both filled by the schema)."""
    return deep_merge(
        config.get("replicates") or {}, config["experiments"][experiment].get("replicates") or {}
    )


def primary_set_stride(pairs: list[tuple[str, int]]) -> int:
    """How far disjoint primary sets are apart in seed: the widest seed range of one
    architecture in the experiment (seeds [0, 1] -> 2: sets {0, 1}, {2, 3}, {4, 5}; one seed per
    architecture -> 1)."""
    spans = {}
    for architecture, seed in pairs:
        low, high = spans.get(architecture, (seed, seed))
        spans[architecture] = (min(low, seed), max(high, seed))
    return max(high - low + 1 for low, high in spans.values())


def experiment_primaries(
    config: Mapping, experiment: str, replicate: int = 0
) -> list[tuple[str, int]]:
    """(architecture, seed) pairs of an experiment's replicate, in the order that defines their
    labels. Without ``replicates.disjoint_primaries`` every replicate has the listed primaries;
    with it, replicate r has them with every seed moved up by r x :func:`primary_set_stride`, so
    the sets of different replicates share no primary."""
    pairs = primary_pairs(config["experiments"][experiment]["primaries"])
    if replicate and replicate_settings(config, experiment).get("disjoint_primaries"):
        shift = replicate * primary_set_stride(pairs)
        pairs = [(architecture, seed + shift) for architecture, seed in pairs]
    return pairs


def experiment_replicates(config: Mapping, experiment: str) -> list[int]:
    """Replicate indices of an experiment: 0 .. replicates.n - 1."""
    return list(range(int(replicate_settings(config, experiment).get("n", 1))))


def experiment_target(config: Mapping, experiment: str) -> str:
    """The class an experiment's maps explain: its own ``target``, else ``saliency.target``."""
    return config["experiments"][experiment].get("target") or config["saliency"]["target"]


def check_experiments(config: Mapping) -> None:
    """Cross-key checks a JSON schema cannot express, with messages that name the key."""
    for name, experiment in config["experiments"].items():
        pairs = experiment_primaries(config, name)
        if len(pairs) < 2:
            raise ConfigError(
                f"experiments.{name}.primaries: got {len(pairs)} primary; expected at least 2 "
                "(a secondary tells primaries apart)"
            )
        twice = sorted({primary_name(a, s) for a, s in pairs if pairs.count((a, s)) > 1})
        if twice:
            raise ConfigError(
                f"experiments.{name}.primaries: {', '.join(twice)} listed more than once; "
                "expected each (architecture, seed) once"
            )
        check_method_names(config, experiment["methods"], f"experiments.{name}.methods")


def check_method_names(config: Mapping, methods: Iterable[str], key: str) -> None:
    """Every name in ``methods`` (the list at ``key``) must be a known saliency method.

    Known = the blocks of ``config["methods"]`` after validation: the schema has one block, with
    its defaults, for every registered method (saliency_fingerprints/saliency/; a test keeps the
    two equal), and validation fills in the blocks a config leaves out. Checked here rather than
    by importing the registry, which would load torch while Snakemake parses the workflow."""
    known = sorted(config.get("methods") or {})
    for index, method in enumerate(methods):
        if method not in known:
            raise ConfigError(
                f"{key}[{index}]: got {method!r}; expected one of: {', '.join(known)}"
            )


def sanity_primaries(config: Mapping) -> list[tuple[str, int]]:
    """(architecture, seed) pairs the sanity checks run on; empty without ``sanity_checks``."""
    return primary_pairs((config.get("sanity_checks") or {}).get("primaries", []))


def check_sanity_checks(config: Mapping) -> None:
    """The sanity checks' methods must be known (:func:`check_method_names`)."""
    block = config.get("sanity_checks") or {}
    check_method_names(config, block.get("methods", []), "sanity_checks.methods")
    pairs = sanity_primaries(config)
    twice = sorted({primary_name(a, s) for a, s in pairs if pairs.count((a, s)) > 1})
    if twice:
        raise ConfigError(
            f"sanity_checks.primaries: {', '.join(twice)} listed more than once; "
            "expected each (architecture, seed) once"
        )


def check_results_writable(results: str | Path) -> None:
    """Raise :class:`ConfigError` if ``results`` cannot be created or written (nothing is
    created by the check)."""
    path = Path(results).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"results: {str(results)!r} is not a directory ({existing} is a file); "
            "expected a writable directory"
        )
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise ConfigError(
            f"results: {str(results)!r} is not writable ({err.strerror} in {existing}); "
            "expected a writable directory"
        ) from None


def local_source(dataset: Mapping) -> dict[str, str]:
    """The local file a dataset is read from, as ``{"folder": ...}`` or ``{"archive": ...}``;
    empty for downloads (torchvision, http(s) archives), which their job fetches."""
    if dataset["source"] == "folder":
        return {"folder": dataset["path"]}
    if dataset["source"] == "archive":
        url = urlparse(dataset["url"])
        if url.scheme == "file":
            return {"archive": url2pathname(url.path)}
        if url.scheme not in ("http", "https"):
            return {"archive": dataset["url"]}
    return {}


def check_dataset_files(dataset: Mapping) -> None:
    """A local dataset folder or archive must exist before anything runs (downloads are
    checked by the job that fetches them)."""
    local = local_source(dataset)
    if "folder" in local and not Path(local["folder"]).is_dir():
        raise ConfigError(
            f"dataset.path: directory {local['folder']!r} not found (relative to "
            f"{os.getcwd()}); expected an ImageFolder directory with train/<class>/ and "
            "test/<class>/"
        )
    if "archive" in local and not Path(local["archive"]).is_file():
        raise ConfigError(
            f"dataset.url: archive {local['archive']!r} not found (relative to {os.getcwd()}); "
            "expected an existing .tar.gz/.tgz/.tar/.tar.bz2/.tar.xz/.zip file"
        )


# -- studies (beyond the paper): config blocks that expand into ordinary experiments -------------

STUDY_KINDS = ("n_primaries", "learning_curve")


def study_level_name(study: str, level: float) -> str:
    """The experiment of one level of a study: ``study-n_primaries-4``,
    ``study-learning_curve-0p25`` (a point is not allowed in experiment names)."""
    text = f"{level:g}" if isinstance(level, float) else str(level)
    return f"study-{study}-{text.replace('.', 'p')}"


def experiment_identity(config: Mapping, experiment: str) -> tuple:
    """What decides the secondaries of an experiment apart from its methods and variants: the
    primaries of every replicate, the target and the secondary settings (with the replicate
    seeds they imply). Two experiments with the same identity train the same secondary for a
    method on its original maps."""
    cfg = deep_merge(config["secondary"], config["experiments"][experiment].get("secondary") or {})
    cfg.setdefault("fit_fraction", 1.0)
    cfg.pop("shuffle_seed", None)  # shapes the shuffled variants only
    primaries = tuple(
        tuple(experiment_primaries(config, experiment, r))
        for r in experiment_replicates(config, experiment)
    )
    return primaries, experiment_target(config, experiment), repr(canonical(cfg))


def _same_as(config: Mapping, name: str, candidate: Mapping) -> str | None:
    """An existing experiment that trains ``candidate``'s secondaries on original maps (its
    identity, its methods among them), or None."""
    trial = {**config, "experiments": {**config["experiments"], name: candidate}}
    identity = experiment_identity(trial, name)
    for other, experiment in config["experiments"].items():
        if other == name:
            continue
        if (
            set(candidate["methods"]) <= set(experiment["methods"])
            and "original" in experiment.get("variants", ["original"])
            and experiment_identity(trial, other) == identity
        ):
            return other
    return None


def _n_primaries_levels(config: Mapping, block: Mapping) -> list[tuple[int, dict]]:
    architecture, methods = block["architecture"], list(block.get("methods") or ["grad"])
    levels = []
    for k in block["counts"]:
        experiment = {
            "description": (
                f"Study n_primaries: {k} {architecture} primaries (seeds 0-{k - 1}), chance 1/{k}."
            ),
            "primaries": [{"architecture": architecture, "seeds": list(range(int(k)))}],
            "methods": methods,
            "variants": ["original"],
        }
        for key in ("target", "secondary", "replicates"):
            if block.get(key):
                experiment[key] = copy.deepcopy(block[key])
        levels.append((int(k), experiment))
    return levels


def _learning_curve_levels(config: Mapping, block: Mapping) -> list[tuple[float, dict]]:
    base_name = block["experiment"]
    if base_name not in config["experiments"]:
        raise ConfigError(
            f"studies.learning_curve.experiment: got {base_name!r}; expected one of: "
            + ", ".join(config["experiments"])
        )
    base = config["experiments"][base_name]
    methods = list(block.get("methods") or base["methods"])
    levels = []
    for fraction in block["fractions"]:
        fraction = float(fraction)
        experiment = {
            "description": (
                f"Study learning_curve: {base_name}'s secondaries fitted on {fraction:g} of "
                "their fitting images."
            ),
            "primaries": copy.deepcopy(base["primaries"]),
            "methods": methods,
            "variants": ["original"],
            "secondary": {**copy.deepcopy(base.get("secondary") or {}), "fit_fraction": fraction},
        }
        for key in ("target", "replicates"):
            if base.get(key):
                experiment[key] = copy.deepcopy(base[key])
        levels.append((fraction, experiment))
    return levels


def expand_studies(config: dict) -> dict[str, dict]:
    """Add every enabled study's experiments to ``config["experiments"]`` (the config after
    validation, which filled the defaults) and return the plan of each study:
    ``{study: {"levels": [{"level", "experiment", "methods", "generated"}, ...]}}``.

    One experiment per level, named :func:`study_level_name`; a level whose experiment has the
    identity (:func:`experiment_identity`) of an existing experiment with its methods is that
    experiment (``generated`` false), so nothing is trained twice. Primaries and map stores are
    shared by identity anyway (paths name architecture, seed, target and method). Running it
    again on an expanded config changes nothing."""
    plan: dict[str, dict] = {}
    for study, block in (config.get("studies") or {}).items():
        if not block or not block.get("enabled", True):
            continue
        if study == "n_primaries":
            levels = _n_primaries_levels(config, block)
        elif study == "learning_curve":
            levels = _learning_curve_levels(config, block)
        else:  # the schema admits only the kinds above
            raise ConfigError(f"studies.{study}: unknown study; expected one of: {STUDY_KINDS}")
        check_method_names(config, levels[0][1]["methods"], f"studies.{study}.methods")
        plan[study] = {"levels": []}
        for level, experiment in levels:
            name = study_level_name(study, level)
            existing = config["experiments"].get(name)
            same = _same_as(config, name, experiment)
            if existing is not None and not _is_expansion(existing, experiment):
                raise ConfigError(
                    f"studies.{study}: level {level} is experiment {name}, which experiments "
                    "already defines differently; expected no experiment named "
                    "study-<study>-<level>"
                )
            generated = same is None
            if generated:
                config["experiments"][name] = experiment
            plan[study]["levels"].append(
                {
                    "level": level,
                    "experiment": name if generated else same,
                    "methods": list(experiment["methods"]),
                    "generated": generated,
                }
            )
    return plan


def _is_expansion(existing: Mapping, experiment: Mapping) -> bool:
    """``existing`` is ``experiment`` after validation filled its defaults (a second expansion)."""
    return all(existing.get(k) == v for k, v in experiment.items())


def study_experiments(plan: Mapping) -> set[str]:
    """The experiments that studies added (they stay out of tables/cross_evaluation.*)."""
    return {
        level["experiment"]
        for study in plan.values()
        for level in study["levels"]
        if level["generated"]
    }
