"""Config checks behind ``rules/common.smk``: one line per problem, naming the key and what was
expected.

Snakemake's own ``validate`` prints the whole schema on an error; :func:`check_schema` reports
only the most relevant error, as ``<key>: got <value>; expected <what>``, and
:func:`validate_config` then fills in the defaults as ``validate`` would. The cross-key checks a
JSON schema cannot express (:func:`check_experiments`) and the checks on the filesystem
(:func:`check_results_writable`, :func:`check_dataset_files`) raise the same kind of
:class:`~saliency_fingerprints.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse
from urllib.request import url2pathname

import jsonschema
import yaml

from .errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config/schema/config.schema.yaml"
"""The config schema: the one place of every config key's default and single-value bounds."""

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


def load_yaml(path: str | Path) -> object:
    """A YAML file through libyaml when PyYAML has it (the schema parses ~10x faster than with
    the pure-Python loader: every Snakemake start, a SLURM job's two included, reads it)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(), Loader=loader)


def check_schema(cfg: Mapping, schema: Mapping | str | Path) -> None:
    """Raise :class:`ConfigError` with the most relevant schema error of ``cfg`` in one line.

    ``schema`` is the schema itself or the path of its YAML file.
    """
    if not isinstance(schema, Mapping):
        schema = _schema() if Path(schema) == SCHEMA_PATH else load_yaml(schema)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is not None:
        raise ConfigError(schema_message(error))


def _with_defaults(validator_class):
    """``validator_class`` that also sets each absent property with a ``default`` as it validates:
    ``snakemake.utils.validate(..., set_default=True)``'s extension (jsonschema's FAQ), with each
    default copied, so that the cached schema is never changed through a config."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if "default" in subschema and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultsValidator = _with_defaults(jsonschema.Draft202012Validator)


def validate_config(cfg: dict) -> None:
    """Check ``cfg`` against the schema (:func:`check_schema`'s one-line error), then fill in
    every default in place, as ``snakemake.utils.validate`` does (tests/test_configuration.py
    checks that the two give the same config) but from the schema parsed once per process."""
    check_schema(cfg, _schema())
    error = jsonschema.exceptions.best_match(_DefaultsValidator(_schema()).iter_errors(cfg))
    if error is not None:  # a default that breaks a rule of the schema: a schema bug
        raise ConfigError(f"config with the schema's defaults filled in: {schema_message(error)}")


@functools.cache
def _schema() -> dict:
    return load_yaml(SCHEMA_PATH)


def _block_defaults(node: Mapping) -> dict:
    """``{key: default}`` of a schema block's properties, including those it takes in through
    ``allOf`` or a local ``$ref`` (the block's own properties win)."""
    found: dict = {}
    if "$ref" in node:
        found.update(_block_defaults(_schema_node(node["$ref"])))
    for part in node.get("allOf", []):
        found.update(_block_defaults(part))
    for key, spec in node.get("properties", {}).items():
        if isinstance(spec, Mapping) and "default" in spec:
            found[key] = spec["default"]
    return found


def _schema_node(ref: str) -> Mapping:
    """The block a local ``$ref`` (``#/$defs/seed``) points to."""
    if not ref.startswith("#/"):
        raise ValueError(f"only local schema references are followed, got {ref!r}")
    node = _schema()
    for step in ref[2:].split("/"):
        node = node[step]
    return node


@functools.cache
def _cached_defaults(path: tuple[str, ...]) -> dict:
    node = _schema()
    for step in path:
        node = node[step]
    return _block_defaults(node)


def schema_defaults(*path: str) -> dict:
    """``{key: default}`` of the properties of the schema block at ``path`` (a fresh copy), as
    ``snakemake.utils.validate`` fills them in: ``schema_defaults("properties", "dataset")``,
    ``schema_defaults("$defs", "train_defaults")``. Keys without a default are left out."""
    return copy.deepcopy(_cached_defaults(tuple(path)))


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``base`` updated recursively with ``override`` (neither is modified)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def learning_rate_candidates(value) -> list[float]:
    """A secondary's ``learning_rate`` (a number, or a list of candidates chosen on validation
    maps) as its candidates, ascending."""
    return sorted(float(v) for v in (value if isinstance(value, list) else [value]))


def canonical_learning_rate(value):
    """A secondary's ``learning_rate`` in the one form its params record: a list of candidates
    sorted (their order does not matter), a list of one rate as that rate."""
    if not isinstance(value, list):
        return value
    return value[0] if len(value) == 1 else sorted(value)


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


def primary_tag(data_seed: int | None = None, epochs: int | None = None) -> str:
    """What a primary's name adds to ``<architecture>-seed<seed>`` when its data seed or its
    training length is not the default: ``-data<d>``, ``-epoch<e>`` (in that order)."""
    return ("" if data_seed is None else f"-data{data_seed}") + (
        "" if epochs is None else f"-epoch{epochs}"
    )


TAG_PATTERN = r"(?:-data(\d+))?(?:-epoch(\d+))?"  # the ``tag`` wildcard of the rules


def parse_tag(tag: str) -> tuple[int | None, int | None]:
    """(data_seed, epochs) of a :func:`primary_tag`."""
    match = re.fullmatch(TAG_PATTERN, tag)
    if match is None:
        raise ConfigError(f"primary tag {tag!r}: expected -data<seed> and/or -epoch<epochs>")
    return tuple(None if g is None else int(g) for g in match.groups())


def primary_name(architecture: str, seed: int | str, tag: str = "") -> str:
    """The name of a primary in paths and in the ``primary`` coordinate of map stores."""
    return f"{architecture}-seed{seed}{tag}"


class Primary(NamedTuple):
    """One primary classifier: its architecture, its initialisation seed, its data seed (which
    training subset and batch order; None: the initialisation seed, so one seed sets both) and
    its training length (None: ``primary_training.epochs``; 0: untrained). Equal tuples are the
    same primary: same name, same weights file, same map stores."""

    architecture: str
    seed: int
    data_seed: int | None = None
    epochs: int | None = None

    @property
    def tag(self) -> str:
        return primary_tag(self.data_seed, self.epochs)

    @property
    def name(self) -> str:
        return primary_name(self.architecture, self.seed, self.tag)

    @property
    def fields(self) -> dict:
        """The path wildcards of this primary: architecture, seed, tag."""
        return {"architecture": self.architecture, "seed": self.seed, "tag": self.tag}

    def shifted(self, shift: int) -> Primary:
        """The same kind of primary with every seed moved up by ``shift``."""
        data = None if self.data_seed is None else self.data_seed + shift
        return self._replace(seed=self.seed + shift, data_seed=data)


def make_primary(
    architecture: str,
    seed: int,
    data_seed: int | None = None,
    epochs: int | None = None,
    default_epochs: int | None = None,
) -> Primary:
    """A :class:`Primary` in its one canonical form: a data seed equal to the initialisation
    seed, or a length equal to ``primary_training.epochs``, is the default (None)."""
    if data_seed is not None and int(data_seed) == int(seed):
        data_seed = None
    if epochs is not None and default_epochs is not None and int(epochs) == int(default_epochs):
        epochs = None
    return Primary(
        architecture,
        int(seed),
        None if data_seed is None else int(data_seed),
        None if epochs is None else int(epochs),
    )


def listed_primaries(groups: Iterable[Mapping], default_epochs: int | None = None) -> list[Primary]:
    """``[{architecture, seeds, data_seeds?, epochs?}, ...]`` as :class:`Primary` tuples, in the
    listed order; ``data_seeds`` pairs with ``seeds`` position by position."""
    primaries = []
    for index, group in enumerate(groups):
        seeds = list(group["seeds"])
        data_seeds = list(group.get("data_seeds") or [None] * len(seeds))
        if len(data_seeds) != len(seeds):
            raise ConfigError(
                f"primaries[{index}].data_seeds: got {len(data_seeds)} entries; expected one "
                f"per seed ({len(seeds)})"
            )
        for seed, data_seed in zip(seeds, data_seeds, strict=True):
            primaries.append(
                make_primary(
                    group["architecture"], seed, data_seed, group.get("epochs"), default_epochs
                )
            )
    return primaries


def replicate_settings(config: Mapping, experiment: str) -> dict:
    """The experiment's ``replicates`` block over the global one (both filled by the schema)."""
    return deep_merge(
        config["replicates"], config["experiments"][experiment].get("replicates") or {}
    )


def primary_set_stride(primaries: list[Primary]) -> int:
    """How far disjoint primary sets are apart in seed: the widest range of the (initialisation
    and data) seeds of one architecture in the experiment (seeds [0, 1] -> 2: sets {0, 1},
    {2, 3}, {4, 5}; one seed per architecture -> 1)."""
    spans = {}
    for p in primaries:
        for seed in (p.seed, p.seed if p.data_seed is None else p.data_seed):
            low, high = spans.get(p.architecture, (seed, seed))
            spans[p.architecture] = (min(low, seed), max(high, seed))
    return max(high - low + 1 for low, high in spans.values())


def experiment_primaries(config: Mapping, experiment: str, replicate: int = 0) -> list[Primary]:
    """The primaries of an experiment's replicate, in the order that defines their labels.
    Without ``replicates.disjoint_primaries`` every replicate has the listed primaries; with it,
    replicate r has them with every seed (initialisation and data) moved up by r x
    :func:`primary_set_stride`, so the sets of different replicates share no primary."""
    try:
        primaries = listed_primaries(
            config["experiments"][experiment]["primaries"],
            (config.get("primary_training") or {}).get("epochs"),  # None: no length is default
        )
    except ConfigError as error:
        raise ConfigError(f"experiments.{experiment}.{error}") from None
    if replicate and replicate_settings(config, experiment)["disjoint_primaries"]:
        shift = replicate * primary_set_stride(primaries)
        primaries = [p.shifted(shift) for p in primaries]
    return primaries


def experiment_replicates(config: Mapping, experiment: str) -> list[int]:
    """Replicate indices of an experiment: 0 .. replicates.n - 1."""
    return list(range(int(replicate_settings(config, experiment)["n"])))


def experiment_target(config: Mapping, experiment: str) -> str:
    """The class an experiment's maps explain: its own ``target``, else ``saliency.target``."""
    return config["experiments"][experiment].get("target") or config["saliency"]["target"]


def experiment_secondary(config: Mapping, experiment: str) -> dict:
    """The global ``secondary`` block with the experiment's overrides applied."""
    return deep_merge(config["secondary"], config["experiments"][experiment].get("secondary", {}))


def check_experiments(config: Mapping) -> None:
    """Cross-key checks a JSON schema cannot express, with messages that name the key."""
    for name, experiment in config["experiments"].items():
        pairs = experiment_primaries(config, name)
        if len(pairs) < 2:
            raise ConfigError(
                f"experiments.{name}.primaries: got {len(pairs)} primary; expected at least 2 "
                "(a secondary tells primaries apart)"
            )
        twice = sorted({p.name for p in pairs if pairs.count(p) > 1})
        if twice:
            raise ConfigError(
                f"experiments.{name}.primaries: {', '.join(twice)} listed more than once; "
                "expected each primary (architecture, seed, data seed, epochs) once"
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


def sanity_primaries(config: Mapping) -> list[Primary]:
    """The primaries the sanity checks run on; empty without ``sanity_checks``."""
    return listed_primaries((config.get("sanity_checks") or {}).get("primaries", []))


def random_label_epochs(config: Mapping, architecture: str) -> int | None:
    """The epoch cap of ``architecture``'s random-label copy (``random_labels.epochs``: one for
    all, or per architecture; None: the primaries' own)."""
    epochs = (config.get("sanity_checks") or {}).get("random_labels", {}).get("epochs")
    return epochs.get(architecture) if isinstance(epochs, dict) else epochs


def check_sanity_checks(config: Mapping) -> None:
    """The sanity checks' methods must be known (:func:`check_method_names`)."""
    block = config.get("sanity_checks") or {}
    check_method_names(config, block.get("methods", []), "sanity_checks.methods")
    pairs = sanity_primaries(config)
    twice = sorted({p.name for p in pairs if pairs.count(p) > 1})
    if twice:
        raise ConfigError(
            f"sanity_checks.primaries: {', '.join(twice)} listed more than once; "
            "expected each (architecture, seed) once"  # sanity primaries have no data seed
        )


def backdoor_enabled(config: Mapping) -> bool:
    """Whether the backdoor experiment runs: a ``backdoor`` block without ``enabled: false``."""
    block = config.get("backdoor")
    return bool(block) and block.get("enabled", True)


def backdoor_primaries(config: Mapping) -> list[Primary]:
    """The primaries that get a backdoored copy; empty when the experiment is off."""
    if not backdoor_enabled(config):
        return []
    return listed_primaries(config["backdoor"]["primaries"])


def check_backdoor(config: Mapping) -> None:
    """Each backdoor primary once (the schema checks the seeds of one entry, not across
    entries)."""
    pairs = backdoor_primaries(config)
    twice = sorted({p.name for p in pairs if pairs.count(p) > 1})
    if twice:
        raise ConfigError(
            f"backdoor.primaries: {', '.join(twice)} listed more than once; "
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

STUDY_KINDS = ("n_primaries", "learning_curve", "init_vs_data", "training_length")


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
            and "original" in experiment["variants"]
            and experiment_identity(trial, other) == identity
        ):
            return other
    return None


def _n_primaries_levels(config: Mapping, block: Mapping) -> list[tuple[int, dict]]:
    architecture = block["architecture"]
    return [
        (
            int(k),
            _own_primaries_experiment(
                block,
                f"Study n_primaries: {k} {architecture} primaries (seeds 0-{k - 1}), chance 1/{k}.",
                [{"architecture": architecture, "seeds": list(range(int(k)))}],
            ),
        )
        for k in block["counts"]
    ]


def _own_primaries_experiment(block: Mapping, description: str, primaries: list[dict]) -> dict:
    """A level of a study that builds its own primaries, with the block's shared settings."""
    experiment = {
        "description": description,
        "primaries": primaries,
        "methods": list(block["methods"]),
        "variants": ["original"],
    }
    for key in ("target", "secondary", "replicates"):
        if block.get(key):
            experiment[key] = copy.deepcopy(block[key])
    return experiment


INIT_VS_DATA_LEVELS = ("init", "data", "both")


def _init_vs_data_levels(config: Mapping, block: Mapping) -> list[tuple[str, dict]]:
    architecture, seeds = block["architecture"], [int(s) for s in block["seeds"]]
    first, k = seeds[0], len(seeds)
    groups = {
        "init": (seeds, [first] * k, f"seeds {seeds}, all on the data of seed {first}"),
        "data": ([first] * k, seeds, f"all initialised by seed {first}, on the data of {seeds}"),
        "both": (seeds, seeds, f"seeds {seeds} for both initialisation and data"),
    }
    levels = []
    for level in INIT_VS_DATA_LEVELS:
        init, data, what = groups[level]
        group = {"architecture": architecture, "seeds": init}
        if data != init:
            group["data_seeds"] = data
        description = f"Study init_vs_data, level {level}: {k} {architecture} primaries, {what}."
        levels.append((level, _own_primaries_experiment(block, description, [group])))
    return levels


def _training_length_levels(config: Mapping, block: Mapping) -> list[tuple[int, dict]]:
    architecture, seeds = block["architecture"], [int(s) for s in block["seeds"]]
    full = int(config["primary_training"]["epochs"])
    levels = []
    for epochs in sorted(int(e) for e in block["epochs"]):
        group = {"architecture": architecture, "seeds": seeds}
        if epochs != full:
            group["epochs"] = epochs
        description = (
            f"Study training_length: {architecture} primaries {seeds} after {epochs} of "
            f"{full} epochs{' (untrained)' if epochs == 0 else ''}."
        )
        levels.append((epochs, _own_primaries_experiment(block, description, [group])))
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
    experiment (``generated`` false), so nothing is trained twice; studies expand in
    :data:`STUDY_KINDS`' order, whatever the config's key order. Primaries and map stores are
    shared by identity anyway (paths name architecture, seed, target and method). Running it
    again on an expanded config changes nothing."""
    plan: dict[str, dict] = {}
    # In STUDY_KINDS' order, not the config's: where two levels are one experiment, the first
    # names it, and reordering the config's keys must not rename (and rerun) it.
    order = {kind: i for i, kind in enumerate(STUDY_KINDS)}
    for study in sorted(config["studies"], key=lambda s: order.get(s, len(order))):
        block = config["studies"][study]
        if not block["enabled"]:
            continue
        if study == "n_primaries":
            levels = _n_primaries_levels(config, block)
        elif study == "learning_curve":
            levels = _learning_curve_levels(config, block)
        elif study == "init_vs_data":
            levels = _init_vs_data_levels(config, block)
        elif study == "training_length":
            levels = _training_length_levels(config, block)
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
