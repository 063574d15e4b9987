# Helpers shared by the rules: config validation, experiment lookups, paths.

import sys

from saliency_fingerprints.configuration import (
    backdoor_enabled,
    backdoor_primaries,
    canonical,
    canonical_learning_rate,
    check_backdoor,
    check_dataset_files,
    check_experiments,
    check_results_writable,
    check_sanity_checks,
    deep_merge,
    expand_studies,
    experiment_primaries as _experiment_primaries,
    experiment_replicates,
    experiment_secondary,
    experiment_target,
    local_source,
    primary_name,
    parse_tag,
    random_label_epochs,
    sanity_primaries,
    schema_defaults,
    TAG_PATTERN,
    study_experiments,
    validate_config,
)
from saliency_fingerprints.errors import ConfigError


def config_error(message):
    """Stop before any job runs, with one line naming the key and what was expected."""
    sys.stderr.write(f"ERROR: config: {message}\n")
    sys.exit(1)


try:
    validate_config(config)  # one-line errors, then the schema's defaults filled in
    STUDIES = expand_studies(config)  # studies -> experiments (study-<study>-<level>)
    check_experiments(config)
    check_sanity_checks(config)
    check_backdoor(config)
    check_results_writable(config["results"])
    check_dataset_files(config["dataset"])
except ConfigError as error:
    config_error(error)

RESULTS = config["results"]
DATASET = f"{RESULTS}/data/{config['dataset']['name']}.zarr"
LOGS = f"{RESULTS}/logs"


wildcard_constraints:
    architecture="[a-z0-9]+",
    seed=r"\d+",
    tag=TAG_PATTERN,  # a primary's data seed and training length, when not the default
    method="[a-z_]+",
    variant="original|shuffled_per_map|shuffled_fixed",
    experiment="[A-Za-z0-9_-]+",
    target="predicted|true",


# Params: every params entry that holds a dict goes through ``canonical`` (keys sorted,
# recursively): the rerun check compares each entry's repr, so a config written with its keys in
# another order is the same config and reruns nothing. The params helpers below return canonical
# values already; rules that pass a config block directly wrap it in ``canonical``.


def local_dataset_input(wildcards):
    """A local source archive or folder as an input, so a missing one stops the plan early
    (http(s) archives are fetched by the job itself). An archive is ``ancient``: its identity is
    its ``sha256`` (in the job's params, checked before extraction), so a copied, restored or
    re-staged archive with the same bytes (a new mtime) reruns nothing, while a new checksum
    reruns the preparation. A folder has no checksum: its mtime counts."""
    local = local_source(config["dataset"])
    return {k: ancient(v) if k == "archive" else v for k, v in local.items()}


def table_experiments():
    """Experiments of tables/cross_evaluation.* and their heatmaps and map grids: all but the
    ones that studies added (those have tables/studies/<study>.*)."""
    generated = study_experiments(STUDIES)
    return [e for e in config["experiments"] if e not in generated]


def study_levels(study):
    """A study's levels as its table job sees them: level, experiment, methods, and the names
    of the experiment's primaries (every replicate's)."""
    keys = ("level", "experiment", "methods")
    return canonical(
        [
            {**{k: lvl[k] for k in keys}, "primaries": [p.name for p in all_primaries(lvl["experiment"])]}
            for lvl in STUDIES[study]["levels"]
        ]
    )


def study_primary_metrics(study):
    """metrics.json of every primary of a study's levels, each once (their test accuracy goes
    beside each level)."""
    return list(
        dict.fromkeys(
            f"{PRIMARY}/metrics.json".format(**p.fields)
            for lvl in STUDIES[study]["levels"]
            for p in all_primaries(lvl["experiment"])
        )
    )


def study_parts(study):
    """The original-map cross-evaluation of every experiment of a study's levels, each once."""
    return list(
        dict.fromkeys(
            CROSS_EVAL.format(experiment=lvl["experiment"], variant="original")
            for lvl in STUDIES[study]["levels"]
        )
    )


def experiment_primaries(experiment, replicate=0):
    """The primaries (configuration.Primary) of an experiment's replicate, in the order that
    defines their labels (replicates differ only with replicates.disjoint_primaries)."""
    return _experiment_primaries(config, experiment, int(replicate))


def primary_names(experiment, replicate=0):
    return [p.name for p in experiment_primaries(experiment, replicate)]


def all_primaries(experiment):
    """The primaries of every replicate of an experiment, each once."""
    return list(
        dict.fromkeys(
            pair
            for r in experiment_replicates(config, experiment)
            for pair in experiment_primaries(experiment, r)
        )
    )


def experiment_methods(experiment):
    return list(config["experiments"][experiment]["methods"])


def experiment_variants(experiment):
    return list(config["experiments"][experiment]["variants"])  # schema default: [original]


def secondary_config(experiment):
    """The global secondary block with the experiment's overrides applied."""
    return experiment_secondary(config, experiment)


def secondary_params(experiment, variants):
    """``secondary_config`` less what cannot change results of ``variants``: ``shuffle_seed``
    only shapes the pixel-shuffled variants, so editing it reruns nothing built on originals.
    Learning-rate candidates in another order, or a list of one rate, rerun nothing either.
    ``seed`` is the first replicate's; replicate r uses ``seed`` + r (``replicate_params``)."""
    cfg = secondary_config(experiment)
    cfg["learning_rate"] = canonical_learning_rate(cfg["learning_rate"])
    if all(v == "original" for v in variants):
        cfg.pop("shuffle_seed", None)
    if float(cfg["fit_fraction"]) == FIT_FRACTION:  # the default: absent, as before the key
        cfg.pop("fit_fraction", None)
    return canonical(cfg)


def replicate_params(experiment):
    """Every replicate of an experiment: its index, secondary seed and primaries."""
    base = int(secondary_config(experiment)["seed"])
    return canonical(
        [
            {"replicate": r, "seed": base + r, "primaries": primary_names(experiment, r)}
            for r in experiment_replicates(config, experiment)
        ]
    )


def saliency_params(target):
    """The saliency block as a map store of ``target`` sees it."""
    return canonical({**config["saliency"], "target": target})


def map_grid_params(experiment):
    """What a map grid shows besides its maps: the secondary's view of a map (preprocess and,
    with shuffled variants, the shuffle seed) - not how secondaries train."""
    cfg = secondary_params(experiment, experiment_variants(experiment))
    return canonical({k: cfg[k] for k in ("preprocess", "shuffle_seed") if k in cfg})


def plot_settings(*keys):
    """Only the ``plots`` keys a figure uses, so an edit reruns only the figures it changes."""
    return canonical({k: config["plots"][k] for k in keys})


def primary_training(tag):
    """``primary_training`` as a primary of ``tag`` trains: with its own epochs where the tag
    sets them (the training_length study); unchanged otherwise, so plain primaries keep their
    params."""
    epochs = parse_tag(tag)[1]
    return canonical(deep_merge(config["primary_training"], {} if epochs is None else {"epochs": epochs}))


def method_params(method):
    return canonical(config["methods"][method] or {})


FIT_FRACTION = schema_defaults("properties", "secondary")["fit_fraction"]


# -- paths --------------------------------------------------------------------------------------
PRIMARY_NAME = primary_name("{architecture}", "{seed}", "{tag}")  # a primary's name, as wildcards
PRIMARY = f"{RESULTS}/primaries/{PRIMARY_NAME}"
MAPS = f"{RESULTS}/saliency/{{target}}/{{method}}/{PRIMARY_NAME}.zarr"
SECONDARY = f"{RESULTS}/experiments/{{experiment}}/secondaries/{{method}}/{{variant}}"
CROSS_EVAL = f"{RESULTS}/experiments/{{experiment}}/cross_evaluation/{{variant}}.csv"


def zarr_store(path):
    """A Zarr store (or a list of them) as a rule's input or output: its root ``zarr.json``, not
    ``directory(path)``. Snakemake marks a directory output with a ``.snakemake_timestamp`` file
    inside it, which Zarr 3 warns about on every open of the store (``ZarrUserWarning: Object at
    .snakemake_timestamp is not recognized``). A store is written under a temporary name and
    renamed into place whole (saliency_fingerprints/store.py), so its zarr.json appears only with
    the complete store and dates it; scripts get the store back with ``store.store_root``."""
    if isinstance(path, str):
        return f"{path}/zarr.json"
    return [zarr_store(p) for p in path]


def maps_of(experiment, methods, replicate=0):
    """Map stores of every (method, primary) of an experiment's replicate, method-major."""
    target = experiment_target(config, experiment)
    return [
        MAPS.format(target=target, method=m, **p.fields)
        for m in methods
        for p in experiment_primaries(experiment, replicate)
    ]


def all_maps_of(experiment, methods):
    """Map stores of every replicate of an experiment, each once."""
    return list(
        dict.fromkeys(
            store
            for r in experiment_replicates(config, experiment)
            for store in maps_of(experiment, methods, r)
        )
    )


def secondaries_of(experiment, variant):
    """Weights of every method's secondary of an experiment's variant (each file holds every
    replicate)."""
    return [
        f"{SECONDARY}/model.safetensors".format(experiment=experiment, method=m, variant=variant)
        for m in experiment_methods(experiment)
    ]


def primary_metrics():
    """metrics.json of every primary of every table experiment's replicates, each once."""
    return list(
        dict.fromkeys(
            f"{PRIMARY}/metrics.json".format(**p.fields)
            for e in table_experiments()
            for p in all_primaries(e)
        )
    )


def final_outputs():
    outputs = [
        f"{RESULTS}/tables/cross_evaluation.csv",
        f"{RESULTS}/tables/cross_evaluation.md",
        f"{RESULTS}/tables/cross_evaluation_replicates.csv",
        f"{RESULTS}/tables/map_diagnostics.csv",
        f"{RESULTS}/tables/map_diagnostics.md",
    ]
    for experiment in table_experiments():
        outputs.append(f"{RESULTS}/figures/maps/{experiment}.png")
        if "input_agnostic" in experiment_methods(experiment):  # class maps per primary
            outputs.append(f"{RESULTS}/figures/class_maps/{experiment}.png")
        for variant in experiment_variants(experiment):
            outputs.append(f"{RESULTS}/figures/cross_evaluation/{experiment}/{variant}.png")
    # the comparison with the paper, when config key paper_comparison maps its tables (paper.smk)
    outputs += paper_outputs()
    # sanity checks of the methods, when config key sanity_checks lists primaries (sanity.smk)
    outputs += sanity_outputs()
    # the backdoor experiment, when config key backdoor is present and enabled (backdoor.smk)
    outputs += backdoor_outputs()
    # studies (config key studies): a table and a figure each (studies.smk)
    for study in STUDIES:
        outputs += [
            f"{RESULTS}/tables/studies/{study}.csv",
            f"{RESULTS}/tables/studies/{study}.md",
            f"{RESULTS}/figures/studies/{study}.png",
        ]
    return outputs
