# Helpers shared by the rules: config validation, experiment lookups, paths.

import copy
import os
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from snakemake.utils import validate


def config_error(message):
    """Stop before any job runs, with one line naming the key and what was expected."""
    sys.stderr.write(f"ERROR: config: {message}\n")
    sys.exit(1)


def key_path(parts):
    """A config location as users write it: ``experiments.two_cnn2.primaries[0].seeds``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def expectation(error):
    """What a failed schema keyword asked for, in words (None if there is no short way)."""
    kind, value = error.validator, error.validator_value
    if kind == "enum":
        return "one of: " + ", ".join(str(v) for v in value)
    if kind == "const":
        return repr(value)
    if kind == "type":
        return f"type {' or '.join(value) if isinstance(value, list) else value}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return f"a number {op[kind]} {value}"
    if kind == "minItems":
        return f"at least {value} item(s)"
    if kind == "minProperties":
        return f"at least {value} entries"
    if kind == "pattern":
        return f"a string matching {value}"
    if kind == "minLength":
        return f"a string of at least {value} character(s)"
    if kind in ("anyOf", "oneOf"):  # one expectation per alternative
        branches = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        words = [expectation(jsonschema.exceptions.best_match(b)) for b in branches.values()]
        if words and all(words):
            return " or ".join(words)
    return None


def schema_message(error):
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


def check_schema(cfg, schema_file):
    """Validate ``cfg`` against the JSON schema, reporting the most relevant error in one line
    (snakemake's own ``validate`` prints the whole schema)."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is not None:
        config_error(schema_message(error))


check_schema(config, Path(workflow.basedir) / "config/schema/config.schema.yaml")
validate(config, schema="../config/schema/config.schema.yaml")  # fills in the defaults

RESULTS = config["results"]
DATASET = f"{RESULTS}/data/{config['dataset']['name']}.zarr"
LOGS = f"{RESULTS}/logs"


wildcard_constraints:
    architecture="[a-z0-9]+",
    seed=r"\d+",
    method="[a-z_]+",
    variant="original|shuffled_per_map|shuffled_fixed",
    experiment="[A-Za-z0-9_-]+",


def local_dataset_input(wildcards):
    """A local source archive or folder as an input, so a missing one stops the plan early and a
    replaced archive reruns the preparation (http(s) archives are fetched by the job itself)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    ds = config["dataset"]
    if ds["source"] == "folder":
        return {"folder": ds["path"]}
    if ds["source"] == "archive":
        url = urlparse(ds["url"])
        if url.scheme == "file":
            return {"archive": url2pathname(url.path)}
        if url.scheme not in ("http", "https"):
            return {"archive": ds["url"]}
    return {}


def deep_merge(base, override):
    """``base`` updated recursively with ``override`` (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def experiment_primaries(experiment):
    """(architecture, seed) pairs of an experiment, in the order that defines their labels."""
    return [
        (group["architecture"], int(seed))
        for group in config["experiments"][experiment]["primaries"]
        for seed in group["seeds"]
    ]


def primary_name(architecture, seed):
    return f"{architecture}-seed{seed}"


def primary_names(experiment):
    return [primary_name(a, s) for a, s in experiment_primaries(experiment)]


def experiment_methods(experiment):
    return list(config["experiments"][experiment]["methods"])


def experiment_variants(experiment):
    return list(config["experiments"][experiment].get("variants", ["original"]))


def secondary_config(experiment):
    """The global secondary block with the experiment's overrides applied."""
    return deep_merge(config["secondary"], config["experiments"][experiment].get("secondary", {}))


def secondary_params(experiment, variants):
    """``secondary_config`` less what cannot change results of ``variants``: ``shuffle_seed``
    only shapes the pixel-shuffled variants, so editing it reruns nothing built on originals."""
    cfg = secondary_config(experiment)
    if all(v == "original" for v in variants):
        cfg.pop("shuffle_seed", None)
    return cfg


def map_grid_params(experiment):
    """What a map grid shows besides its maps: the secondary's view of a map (preprocess and,
    with shuffled variants, the shuffle seed) - not how secondaries train."""
    cfg = secondary_params(experiment, experiment_variants(experiment))
    return {k: cfg[k] for k in ("preprocess", "shuffle_seed") if k in cfg}


def plot_settings(*keys):
    """Only the ``plots`` keys a figure uses, so an edit reruns only the figures it changes."""
    return {k: config["plots"][k] for k in keys}


def method_params(method):
    if method not in config["methods"]:
        raise ValueError(
            f"methods.{method}: an experiment names method {method!r} but the config has no "
            f"'methods.{method}' block"
        )
    return config["methods"][method] or {}


def check_experiments():
    """Cross-key checks a JSON schema cannot express, with messages that name the key."""
    for name, experiment in config["experiments"].items():
        pairs = experiment_primaries(name)
        if len(pairs) < 2:
            config_error(
                f"experiments.{name}.primaries: got {len(pairs)} primary; expected at least 2 "
                "(a secondary tells primaries apart)"
            )
        twice = sorted({primary_name(a, s) for a, s in pairs if pairs.count((a, s)) > 1})
        if twice:
            config_error(
                f"experiments.{name}.primaries: {', '.join(twice)} listed more than once; "
                "expected each (architecture, seed) once"
            )
        for method in experiment_methods(name):
            if method not in config["methods"]:
                config_error(
                    f"experiments.{name}.methods names {method!r} but methods.{method} is "
                    f"missing; expected a methods.{method} block (use {{}} for the defaults)"
                )


def check_results_writable(results):
    """Fail before any job if ``results`` cannot be created or written (nothing is left)."""
    path = Path(results).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        config_error(f"results: {results!r} is not a directory ({existing} is a file); "
                     "expected a writable directory")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        config_error(f"results: {results!r} is not writable ({err.strerror} in {existing}); "
                     "expected a writable directory")


def check_dataset_files(ds):
    """A local dataset folder or archive must exist before anything runs (downloads are
    checked by the job that fetches them)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    if ds["source"] == "folder" and not Path(ds["path"]).is_dir():
        config_error(
            f"dataset.path: directory {ds['path']!r} not found (relative to {os.getcwd()}); "
            "expected an ImageFolder directory with train/<class>/ and test/<class>/"
        )
    if ds["source"] == "archive":
        url = urlparse(ds["url"])
        if url.scheme in ("http", "https"):
            return
        local = url2pathname(url.path) if url.scheme == "file" else ds["url"]
        if not Path(local).is_file():
            config_error(
                f"dataset.url: archive {local!r} not found (relative to {os.getcwd()}); "
                "expected an existing .tar.gz/.tgz/.tar/.tar.bz2/.tar.xz/.zip file"
            )


check_experiments()
check_results_writable(config["results"])
check_dataset_files(config["dataset"])


# -- paths --------------------------------------------------------------------------------------
PRIMARY = f"{RESULTS}/primaries/{{architecture}}-seed{{seed}}"
MAPS = f"{RESULTS}/saliency/{{method}}/{{architecture}}-seed{{seed}}.zarr"
SECONDARY = f"{RESULTS}/experiments/{{experiment}}/secondaries/{{method}}/{{variant}}"
CROSS_EVAL = f"{RESULTS}/experiments/{{experiment}}/cross_evaluation/{{variant}}.csv"


def maps_of(experiment, methods):
    """Map stores of every (method, primary) of an experiment, method-major."""
    return [
        MAPS.format(method=m, architecture=a, seed=s)
        for m in methods
        for a, s in experiment_primaries(experiment)
    ]


def final_outputs():
    outputs = [
        f"{RESULTS}/tables/cross_evaluation.csv",
        f"{RESULTS}/tables/cross_evaluation.md",
    ]
    for experiment in config["experiments"]:
        outputs.append(f"{RESULTS}/figures/maps/{experiment}.png")
        for variant in experiment_variants(experiment):
            outputs.append(f"{RESULTS}/figures/cross_evaluation/{experiment}/{variant}.png")
    # the comparison with the paper, when config key paper_comparison maps its tables (paper.smk)
    outputs += paper_outputs()
    return outputs
