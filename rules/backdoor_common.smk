# Helpers of rules/backdoor.smk: the backdoor config key, paths and params.

BACKDOOR = f"{RESULTS}/backdoor"
BACKDOOR_PRIMARY = f"{BACKDOOR}/primaries/{PRIMARY_NAME}-backdoor"
BACKDOOR_MAPS = f"{BACKDOOR}/maps/{{kind}}/{PRIMARY_NAME}.zarr"
BACKDOOR_KINDS = ("clean", "backdoored")  # the primary as trained, and its backdoored copy


def backdoor_settings():
    return config.get("backdoor") or {}


def backdoor_poisoning(*keys):
    """What a backdoored copy's training depends on besides primary_training (all four keys),
    or only ``keys`` of it (the table and the figure)."""
    cfg = backdoor_settings()
    keys = keys or ("target_class", "poison_fraction", "trigger", "seed")
    return canonical({k: cfg[k] for k in keys})


def backdoor_maps_params():
    """What a map store depends on besides its weights: the input-agnostic settings, the draws
    per class, and the saliency keys that change a map's float rounding (not the poisoning, so
    editing the trigger leaves the clean primary's maps alone)."""
    return canonical(
        {
            "method": method_params("input_agnostic"),
            "n_maps": backdoor_settings()["n_maps"],
            "saliency": {k: config["saliency"][k] for k in ("pass_size", "tf32")},
        }
    )


def backdoor_weights(wildcards):
    """The weights a map store explains: the primary (clean) or its backdoored copy."""
    which = {"architecture": wildcards.architecture, "seed": wildcards.seed, "tag": wildcards.tag}
    path = PRIMARY if wildcards.kind == "clean" else BACKDOOR_PRIMARY
    return f"{path}/model.safetensors".format(**which)


def backdoor_stores():
    """Every map store of the table and the figure: per primary, clean then backdoored."""
    return [
        zarr_store(BACKDOOR_MAPS.format(kind=kind, **p.fields))
        for p in backdoor_primaries(config)
        for kind in BACKDOOR_KINDS
    ]


def backdoor_metrics():
    return [
        f"{BACKDOOR_PRIMARY}/metrics.json".format(**p.fields)
        for p in backdoor_primaries(config)
    ]


def backdoor_outputs():
    if not backdoor_enabled(config):
        return []
    return [
        f"{RESULTS}/tables/backdoor.csv",
        f"{RESULTS}/tables/backdoor.md",
        f"{RESULTS}/figures/backdoor.png",
    ]
