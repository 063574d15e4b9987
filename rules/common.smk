# Helpers shared by the rules: config validation, experiment lookups, paths.

import copy

from snakemake.utils import validate


validate(config, schema="../config/schema/config.schema.yaml")

RESULTS = config["results"]
DATASET = f"{RESULTS}/data/{config['dataset']['name']}.zarr"
LOGS = f"{RESULTS}/logs"


wildcard_constraints:
    architecture="[a-z0-9]+",
    seed=r"\d+",
    method="[a-z_]+",
    variant="original|shuffled_per_map|shuffled_fixed",
    experiment="[A-Za-z0-9_-]+",


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
            raise ValueError(
                f"experiments.{name}.primaries: at least 2 primaries are needed "
                f"(a secondary tells primaries apart), got {len(pairs)}"
            )
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"experiments.{name}.primaries: a primary is listed twice")
        for method in experiment_methods(name):
            method_params(method)


check_experiments()


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
    return outputs
