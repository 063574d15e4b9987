"""The class-cue control: how much of "which primary made this map" the explained class gives away.

With ``target: predicted`` two primaries often explain *different* classes for the same image
(each explains its own prediction), and each primary predicts some classes more often than the
other. A secondary could then tell primaries apart from the class a map explains, which a map
shows through its shape (an object's outline, a class's typical evidence), without any network
fingerprint. This module measures that shortcut directly:

* :func:`fit_class_cue` - the best predictor of the primary that sees *only* the class a map
  explains: for every class, the primary that explained it most often among the secondary's
  training maps (the Bayes rule for the empirical joint distribution; ties go to the lower
  primary index, unseen classes to the most frequent primary);
* :func:`class_cue_predict` - that predictor applied to test maps; its accuracy is the baseline
  every cross-evaluation cell is compared with;
* :func:`same_class_images` - the test images for which every primary explains the same class:
  on their maps the class cue is useless, so a secondary's accuracy there is free of it.

With ``target: true`` every primary explains the image's label, so the cue is at chance and every
image is a same-class image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def fit_class_cue(targets: np.ndarray, labels: np.ndarray, n_primaries: int) -> dict[int, int]:
    """``{class: primary}`` - the primary that most often explained each class in training."""
    targets = np.asarray(targets, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if targets.shape != labels.shape:
        raise ValueError("targets and labels must have one entry per map")
    rule = {}
    for cls in np.unique(targets):
        counts = np.bincount(labels[targets == cls], minlength=n_primaries)
        rule[int(cls)] = int(np.argmax(counts))  # argmax: the first (lowest) index on ties
    rule[-1] = int(np.argmax(np.bincount(labels, minlength=n_primaries))) if len(labels) else 0
    return rule


def class_cue_predict(rule: dict[int, int], targets: np.ndarray) -> np.ndarray:
    """The primary the class-cue rule guesses for maps explaining ``targets``."""
    fallback = rule.get(-1, 0)
    return np.array([rule.get(int(t), fallback) for t in np.asarray(targets)], dtype=np.int64)


def class_cue_accuracy(
    train_targets: np.ndarray,
    train_labels: np.ndarray,
    test_targets: np.ndarray,
    test_labels: np.ndarray,
    n_primaries: int,
) -> float:
    """Accuracy on the test maps of the class-cue rule fitted on the training maps."""
    rule = fit_class_cue(train_targets, train_labels, n_primaries)
    guess = class_cue_predict(rule, test_targets)
    return float(np.mean(guess == np.asarray(test_labels))) if len(guess) else float("nan")


def same_class_images(samples: np.ndarray, targets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per map: True if every primary that made a map of this map's image explains one class.

    ``samples``, ``targets``, ``labels``: per map, the source image id, the explained class and
    the primary index. An image counts only when all primaries present made a map of it.
    """
    maps = pd.DataFrame({"sample": samples, "target": targets, "label": labels})
    by_image = maps.groupby("sample")
    n_primaries = maps["label"].nunique()
    agree = (by_image["label"].nunique() == n_primaries) & (by_image["target"].nunique() == 1)
    return maps["sample"].map(agree).to_numpy(dtype=bool)
