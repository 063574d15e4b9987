"""Secondary inputs: preprocessing and the image-disjoint train/test split."""

import numpy as np
import pytest

from saliency_fingerprints.errors import ConfigError, DataError
from saliency_fingerprints.preprocess import preprocess_maps
from saliency_fingerprints.secondary import image_disjoint_split


def test_default_preprocessing_is_abs_sum_clipped_and_scaled():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 10, 10)).astype(np.float32)
    out = preprocess_maps(x, "abs_sum", 99.0)
    assert out.shape == (4, 1, 10, 10) and out.dtype == np.float32
    reduced = np.abs(x).sum(1)
    for raw, pre in zip(reduced, out[:, 0], strict=True):
        limit = np.percentile(raw, 99)
        assert np.allclose(pre, np.minimum(raw, limit) / limit, atol=1e-6)
        assert pre.min() >= 0 and pre.max() == pytest.approx(1.0)


def test_other_reductions_and_zero_maps():
    x = np.zeros((2, 3, 4, 4), dtype=np.float32)
    x[0, 1, 2, 2] = -2.0
    signed = preprocess_maps(x, "sum", None)
    assert signed[0, 0, 2, 2] == pytest.approx(-1.0) and not signed[1].any()
    assert preprocess_maps(x, "abs_max", None)[0, 0, 2, 2] == pytest.approx(1.0)
    assert preprocess_maps(x, "none", None).shape == (2, 3, 4, 4)
    with pytest.raises(ConfigError, match="secondary.preprocess.reduce"):
        preprocess_maps(x, "median", None)


def test_split_is_image_disjoint_seeded_and_complete():
    ids = np.arange(100, 400)
    train, test = image_disjoint_split(ids, 0.3, seed=5)
    assert len(test) == 90 and len(train) == 210
    assert not np.intersect1d(train, test).size
    assert np.array_equal(np.union1d(train, test), ids)
    again = image_disjoint_split(ids[::-1], 0.3, seed=5)  # order of ids does not matter
    assert np.array_equal(again[1], test)
    assert not np.array_equal(image_disjoint_split(ids, 0.3, seed=6)[1], test)


def test_split_errors():
    # fractions outside (0, 1): the schema (tests/test_configuration.py)
    with pytest.raises(DataError, match="at least 2 images"):
        image_disjoint_split(np.arange(1), 0.5, 0)


def test_validation_split_is_disjoint_from_fitting_and_test_images():
    from saliency_fingerprints.secondary import validation_split

    ids = np.arange(1000, 1500)
    train, test = image_disjoint_split(ids, 0.3, seed=0)
    fit, val = validation_split(train, 0.2, seed=0)
    assert len(val) == round(len(train) * 0.2) and len(fit) + len(val) == len(train)
    for a, b in ((fit, val), (fit, test), (val, test)):
        assert not np.intersect1d(a, b).size
    assert np.array_equal(np.union1d(fit, val), train)
    assert np.array_equal(validation_split(train[::-1], 0.2, seed=0)[1], val)
