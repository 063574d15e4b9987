"""Cross-evaluation: every secondary of an experiment on every method's test maps, per replicate,
with the class-cue control; :mod:`.tables` summarises the rows over replicates."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .classcue import class_cue_predict, fit_class_cue, same_class_images
from .secondary import load_mapset, split_ids, to_tensors
from .stage import Stage
from .store import open_maps
from .tables import REPLICATE_COLUMNS, p_above_chance, write_table
from .training import load_model, model_metadata, predict

log = logging.getLogger(__name__)


def load_targets(
    paths: list[str | Path], primaries: list[str], ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The explained class and the primary index of every map of ``ids`` (no map is read)."""
    targets, labels = [], []
    for index, path in enumerate(paths):
        ds = open_maps(path)
        keep = np.isin(ds["sample"].values, ids)
        targets.append(ds["target"].values[keep].astype(np.int64))
        labels.append(np.full(int(keep.sum()), index, dtype=np.int64))
    return np.concatenate(targets), np.concatenate(labels)


def cross_evaluate(
    *,
    experiment: str,
    variant: str,
    replicates: list[dict],
    cfg: dict,
    out_csv: str | Path,
    device: torch.device,
    threads: int | None = None,
) -> pd.DataFrame:
    """Score every replicate's secondaries on the test maps of every method, once.

    ``replicates``: one dict per replicate with ``replicate`` (index), ``seed``, ``primaries``
    (names in label order), ``secondaries`` (train method -> the weights file that holds every
    replicate, see :func:`.secondary.train_secondary`) and ``maps`` (test method -> one store
    per primary). Beside each accuracy: the class-cue baseline on the same maps
    (:mod:`.classcue`, fitted on the secondary's training images) with the discordant counts of
    the paired comparison, and the accuracy on the maps of images that every primary explains
    as the same class. Writes one row per (replicate, train method, test method).
    """
    stage = Stage(
        "cross_evaluate",
        {
            "experiment": experiment,
            "variant": variant,
            "replicates": [
                {k: r[k] for k in ("replicate", "seed", "primaries")} for r in replicates
            ],
            **cfg,
        },
        device,
        seed=int(cfg["seed"]),
        threads=threads,
    )
    rows = []
    loaded: dict[tuple, dict] = {}  # replicates on the same primaries share their test maps
    for rep in replicates:
        primaries = rep["primaries"]
        chance = 1.0 / len(primaries)
        scored = loaded.setdefault(tuple(primaries), {})
        for test_method, paths in rep["maps"].items():
            if test_method in scored:
                continue
            train_ids, test_ids = split_ids(paths, cfg)
            test = load_mapset(paths, primaries, test_ids, cfg, variant)
            train_targets, train_labels = load_targets(paths, primaries, train_ids)
            cue = class_cue_predict(
                fit_class_cue(train_targets, train_labels, len(primaries)), test.target
            )
            same = same_class_images(test.sample, test.target, test.y)
            scored[test_method] = (to_tensors(test, device), cue == test.y, same)
        for train_method, weights in rep["secondaries"].items():
            model = load_model(weights, device, f"rep{rep['replicate']}")
            # the learning rate and epoch chosen on validation (absent from older weights files)
            trained = model_metadata(weights)
            rate = trained.get(f"rep{rep['replicate']}.learning_rate")
            epoch = trained.get(f"rep{rep['replicate']}.epoch")
            for test_method, ((x, y), cue_right, same) in scored.items():
                right = (predict(model, x) == y).cpu().numpy()
                n = len(right)
                rows.append(
                    {
                        "experiment": experiment,
                        "variant": variant,
                        "replicate": rep["replicate"],
                        "seed": rep["seed"],
                        "primaries": ",".join(primaries),
                        "train_method": train_method,
                        "test_method": test_method,
                        "secondary_learning_rate": float(rate) if rate else None,
                        "secondary_epoch": int(epoch) if epoch else None,
                        "accuracy": float(right.mean()),
                        "n_test": n,
                        "chance": chance,
                        "n_primaries": len(primaries),
                        "class_cue": float(cue_right.mean()),
                        "only_secondary": int((right & ~cue_right).sum()),
                        "only_cue": int((~right & cue_right).sum()),
                        "same_class_accuracy": float(right[same].mean())
                        if same.any()
                        else float("nan"),
                        "n_same_class": int(same.sum()),
                        "same_class_fraction": float(same.mean()),
                        "p_value": p_above_chance(int(right.sum()), n, chance),
                    }
                )
                log.info(
                    "%s/%s rep%d: trained on %s, tested on %s: accuracy %.4f (n=%d), class cue "
                    "%.4f, same-class images %.4f (n=%d)",
                    experiment,
                    variant,
                    rep["replicate"],
                    train_method,
                    test_method,
                    rows[-1]["accuracy"],
                    n,
                    rows[-1]["class_cue"],
                    rows[-1]["same_class_accuracy"],
                    rows[-1]["n_same_class"],
                )
    table = pd.DataFrame(rows, columns=REPLICATE_COLUMNS)
    write_table(table, out_csv, stage.finish())
    return table
