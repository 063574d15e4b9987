"""The class-cue control: the best guess of the primary from the explained class alone."""

import numpy as np
import pytest

from saliency_fingerprints.classcue import (
    class_cue_accuracy,
    class_cue_predict,
    fit_class_cue,
    same_class_images,
)


def test_one_to_one_classes_identify_the_primary():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    targets = labels * 2 + 1  # primary p explains class 2p + 1 only
    accuracy = class_cue_accuracy(targets[:1000], labels[:1000], targets[1000:], labels[1000:], 4)
    assert accuracy == 1.0


@pytest.mark.parametrize("n_primaries", [2, 10])
def test_independent_classes_give_chance(n_primaries):
    rng = np.random.default_rng(1)
    n = 40_000
    labels = rng.integers(0, n_primaries, n)
    targets = rng.integers(0, 10, n)  # the class says nothing about the primary
    accuracy = class_cue_accuracy(
        targets[: n // 2], labels[: n // 2], targets[n // 2 :], labels[n // 2 :], n_primaries
    )
    assert accuracy == pytest.approx(1 / n_primaries, abs=0.015)


def test_partial_cue_is_the_bayes_rule():
    # primary 0 explains class 0 in 80% of its maps, primary 1 in 30%
    rng = np.random.default_rng(2)
    n = 20_000
    labels = rng.integers(0, 2, n)
    targets = np.where(rng.random(n) < np.where(labels == 0, 0.8, 0.3), 0, 1)
    rule = fit_class_cue(targets, labels, 2)
    assert rule[0] == 0 and rule[1] == 1
    # expected accuracy: 0.5 * 0.8 + 0.5 * 0.7 = 0.75
    assert np.mean(class_cue_predict(rule, targets) == labels) == pytest.approx(0.75, abs=0.01)


def test_unseen_class_and_ties_fall_back_deterministically():
    rule = fit_class_cue(np.array([3, 3, 5, 5]), np.array([1, 1, 0, 1]), 2)
    assert rule[3] == 1 and rule[5] == 0  # a tie goes to the lower index
    assert class_cue_predict(rule, np.array([7]))[0] == 1  # unseen: the most frequent primary


def test_same_class_images():
    samples = np.array([10, 10, 11, 11, 12, 12, 13])
    labels = np.array([0, 1, 0, 1, 0, 1, 0])
    targets = np.array([4, 4, 4, 5, 6, 6, 1])
    same = same_class_images(samples, targets, labels)
    # image 10 and 12 agree; 11 differs; 13 lacks the map of primary 1
    assert same.tolist() == [True, True, False, False, True, True, False]
