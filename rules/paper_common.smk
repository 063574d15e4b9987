# Helpers of rules/paper.smk: the paper_comparison config key, checked at parse time, and the
# panels of the paper figure.

from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.paper import check_paper_comparison, table_variant


PAPER = config.get("paper_comparison") or {}
try:
    check_paper_comparison(config)
except ConfigError as error:
    config_error(error)  # rules/common.smk: the same one-line ERROR: config: message


def paper_figure_panels():
    """Panels of figures/paper_figures.png: (a) the paper's Figure 1, Grad maps of two ResNets
    and their pixel-shuffled versions; (b) its Figure 2, every method's maps of two 2-layer CNNs.
    A panel is drawn when its paper table is mapped onto one of our experiments."""
    tables = PAPER.get("tables", {})
    panels = []
    resnets = tables.get("shuffled_two_resnets") or tables.get("two_resnets")
    if resnets:
        variants = ["original"]
        shuffled = table_variant("shuffled_two_resnets", PAPER)
        if shuffled in experiment_variants(resnets):
            variants.append(shuffled)
        panels.append(
            panel(resnets, ["grad"], variants, f"(a) like Figure 1: Grad, {resnets}")
        )
    if tables.get("two_cnn2"):
        experiment = tables["two_cnn2"]
        panels.append(
            panel(
                experiment,
                experiment_methods(experiment),
                ["original"],
                f"(b) like Figure 2: every method, {experiment}",
            )
        )
    return panels


def panel(experiment, methods, variants, title):
    """The first two primaries of an experiment (the paper's networks A and B)."""
    primaries = experiment_primaries(experiment)[:2]
    secondary = secondary_config(experiment)
    return {
        "title": title,
        "stores": {
            m: {
                p.name: MAPS.format(
                    target=experiment_target(config, experiment), method=m, **p.fields
                )
                for p in primaries
            }
            for m in methods
        },
        "variants": variants,
        "preprocess": canonical(secondary["preprocess"]),
        "shuffle_seed": secondary["shuffle_seed"],
    }


def paper_outputs():
    if not PAPER:
        return []
    outputs = [
        f"{RESULTS}/tables/paper_comparison.csv",
        f"{RESULTS}/tables/paper_comparison.md",
    ]
    if paper_figure_panels():
        outputs.append(f"{RESULTS}/figures/paper_figures.png")
    return outputs
