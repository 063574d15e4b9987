# Helpers of rules/sanity.smk: the sanity_checks config key, paths and params.

SANITY = f"{RESULTS}/sanity"
RANDOM_LABEL_PRIMARY = f"{SANITY}/primaries/{PRIMARY_NAME}-random_labels"
SANITY_TABLE = f"{SANITY}/{{method}}/{PRIMARY_NAME}.csv"
SANITY_MAPS = f"{SANITY}/{{method}}/{PRIMARY_NAME}.zarr"


def sanity_settings():
    return config.get("sanity_checks") or {}


def random_labels_enabled():
    return sanity_settings().get("random_labels", {}).get("enabled", True)


def random_label_training(architecture):
    """``primary_training`` with the epoch cap of ``architecture``'s random-label copy, where
    set (``random_labels.epochs``: one for all, or per architecture; null: the primary's)."""
    epochs = random_label_epochs(config, architecture)
    return canonical(
        deep_merge(config["primary_training"], {} if epochs is None else {"epochs": epochs})
    )


def random_label_target():
    """The train accuracy at which a random-label copy stops (null: it runs every epoch)."""
    return sanity_settings()["random_labels"].get("target_train_accuracy")


def random_label_metrics():
    """The random-label copies' metrics, which the summary table reports beside their rows."""
    if not random_labels_enabled():
        return []
    return [
        f"{RANDOM_LABEL_PRIMARY}/metrics.json".format(**p.fields)
        for p in sanity_primaries(config)
    ]


SWITCHED_SANITY_CHECKS = ("smooth_randomisation", "efficient_randomisation")


def sanity_params():
    """What a sanity-check table depends on, besides its method and primary (the random-label
    primary's training is in its own rule's params)."""
    cfg = sanity_settings()
    keep = ("n_images", "seed", "parameter_randomisation", "input_shift", "figure_images")
    return canonical(
        {
            **{k: cfg[k] for k in keep},
            "random_labels": random_labels_enabled(),
            "target": config["saliency"]["target"],
            # Hedström et al.'s sMPRT and eMPRT: a block that is off is only {enabled: false},
            # so editing its other keys reruns nothing
            **{k: enabled_block(cfg[k]) for k in SWITCHED_SANITY_CHECKS},
        }
    )


def enabled_block(block):
    """A switchable block as a job depends on it: all of it when enabled, else that alone."""
    return block if block["enabled"] else {"enabled": False}


def sanity_check_input(wildcards):
    """The dataset, the primary and (with the data randomisation test) its random-label copy."""
    which = {"architecture": wildcards.architecture, "seed": wildcards.seed, "tag": wildcards.tag}
    inputs = {
        "dataset": zarr_store(DATASET),
        "weights": f"{PRIMARY}/model.safetensors".format(**which),
    }
    if random_labels_enabled():
        inputs["random_labels"] = f"{RANDOM_LABEL_PRIMARY}/model.safetensors".format(**which)
    return inputs


def sanity_outputs():
    if not sanity_primaries(config):
        return []
    return [
        f"{RESULTS}/tables/sanity_checks.csv",
        f"{RESULTS}/tables/sanity_checks.md",
        f"{RESULTS}/figures/sanity/rank_correlation.png",
    ] + [
        f"{RESULTS}/figures/sanity/maps/{p.name}.png" for p in sanity_primaries(config)
    ]
