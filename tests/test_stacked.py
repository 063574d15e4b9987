"""Stacked training trains every model exactly as if alone (up to float rounding)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saliency_fingerprints.errors import DataError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.stacked import stack_reason, train_models, train_stacked
from saliency_fingerprints.training import TrainSettings, train_classifier


def _data(seed: int, n: int, channels: int = 1, size: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, channels, size, size, generator=g) + y.view(-1, 1, 1, 1) * 0.3
    return x, y


def _models(architecture: str, seeds: list[int], channels: int = 1, size: int = 8):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(architecture, channels, size, 3))
    return models


def _alone(architecture, seeds, trains, settings, **options):
    histories, models = [], _models(architecture, seeds)
    for model, seed, train, validation in zip(
        models, seeds, trains, options.pop("validations", [None] * len(seeds)), strict=True
    ):
        histories.append(
            train_classifier(
                model,
                train,
                None,
                settings,
                seed,
                f"alone{seed}",
                validation=validation,
                **options,
            )
        )
    return models, histories


def _weights_close(a, b, learning_rate, weight_rtol=3e-3, step_fraction=0.25):
    """Every float weight tensor of ``a`` within a Frobenius distance of ``b`` of
    ``weight_rtol`` of its norm plus ``step_fraction`` of one learning-rate step per element.
    Not elementwise: Adam divides by the root of tiny second moments, so float rounding of the
    batched kernels (which also depends on the thread count) can move a single weight, or a small
    bias whose norm is itself a few steps, by a fraction of a step without any real difference;
    a model from another seed is many steps away (``test_the_weight_check_can_fail``)."""
    for key, value in a.state_dict().items():
        other = b.state_dict()[key].to(value.device)
        if not value.is_floating_point():
            if not torch.equal(value, other):
                return False, key
            continue
        distance = float(torch.linalg.vector_norm(value - other))
        allowed = weight_rtol * float(torch.linalg.vector_norm(value)) + (
            step_fraction * learning_rate * value.numel() ** 0.5
        )
        if distance > allowed:
            return False, (key, distance, allowed)
    return True, None


LOSS_RTOL = 1e-4
"""Losses may differ by this relative amount: the way weights may (``_weights_close``), a
rounding-level gradient on a weight whose Adam second moment is near zero moves it by a fraction
of a step, and the loss follows. Seen: a MiniCNN's epoch losses 7e-8, 6e-7, 4e-5 apart on an
AVX-512 CPU (within 1e-5 on the CPUs before it); two seeds' models after the same training are
8e-4 to 3e-2 apart (``test_the_weight_check_can_fail``)."""


def _assert_same(models_a, histories_a, models_b, histories_b, learning_rate, atol=1e-5):
    """Same epochs and records (within ``atol``; losses within ``LOSS_RTOL`` too), and weights
    close (``_weights_close``)."""
    for a, b, ha, hb in zip(models_a, models_b, histories_a, histories_b, strict=True):
        assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb]
        for ra, rb in zip(ha, hb, strict=True):
            assert ra.keys() == rb.keys()
            for key in ra:
                rel = LOSS_RTOL if key.endswith("loss") else None
                assert ra[key] == pytest.approx(rb[key], rel=rel, abs=atol), key
        close, where = _weights_close(a, b, learning_rate)
        assert close, where


@pytest.mark.parametrize(
    ("architecture", "optimizer"), [("cnn2", "sgd"), ("minicnn", "adam"), ("miniresnet", "adam")]
)
def test_stacked_equals_alone(architecture, optimizer):
    seeds = [3, 4, 5]
    trains = [_data(s, 40) for s in seeds]
    settings = TrainSettings(
        epochs=3, batch_size=16, learning_rate=1e-3, optimizer=optimizer, weight_decay=1e-4
    )
    alone, h_alone = _alone(architecture, seeds, trains, settings, full_train_accuracy=False)
    stacked = _models(architecture, seeds)
    h_stacked = train_stacked(stacked, trains, settings, seeds, [f"s{s}" for s in seeds])
    _assert_same(alone, h_alone, stacked, h_stacked, settings.learning_rate)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_stacked_models_with_their_own_learning_rates_equal_alone(optimizer):
    """A stack whose models have learning rates of their own (a secondary's candidates stacked
    with its replicates) trains each exactly as a plain loop at that rate."""
    seeds, rates = [3, 3, 4, 4], [1e-3, 1e-4, 1e-3, 3e-3]
    trains = [_data(s, 40) for s in seeds]
    base = TrainSettings(
        epochs=3, batch_size=16, learning_rate=0.5, optimizer=optimizer, weight_decay=1e-4
    )
    alone, h_alone = [], []
    for seed, rate, train in zip(seeds, rates, trains, strict=True):
        settings = dataclasses.replace(base, learning_rate=rate)
        models, histories = _alone("minicnn", [seed], [train], settings, full_train_accuracy=False)
        alone += models
        h_alone += histories
    stacked = _models("minicnn", seeds)
    h_stacked = train_stacked(stacked, trains, base, seeds, list("abcd"), learning_rates=rates)
    for a, b, ha, hb, rate in zip(alone, stacked, h_alone, h_stacked, rates, strict=True):
        _assert_same([a], [ha], [b], [hb], rate)
    # the rates took effect: the same seed and data at another rate is another model
    assert not _weights_close(stacked[0], stacked[1], rates[1])[0]
    plain = _models("minicnn", seeds)
    h_plain = train_models(
        plain, trains, base, seeds, list("abcd"), full_train_accuracy=False, learning_rates=rates
    )
    for a, b, ha, hb in zip(alone, plain, h_alone, h_plain, strict=True):
        assert ha == hb
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_stacked_early_stopping_per_model():
    """Each model keeps its own best validation epoch and stops on its own patience, while the
    others train on."""
    seeds = [0, 1, 2, 3]
    trains = [_data(10 + s, 48) for s in seeds]
    validations = [_data(20 + s, 24) for s in seeds]
    settings = TrainSettings(epochs=8, batch_size=16, learning_rate=3e-3)
    options = {"patience": 2, "full_train_accuracy": False}
    alone, h_alone = _alone("cnn2", seeds, trains, settings, validations=validations, **options)
    stacked = _models("cnn2", seeds)
    h_stacked = train_stacked(
        stacked,
        trains,
        settings,
        seeds,
        [f"s{s}" for s in seeds],
        validations=validations,
        patience=2,
    )
    _assert_same(alone, h_alone, stacked, h_stacked, settings.learning_rate)
    assert len({len(h) for h in h_alone}) > 1, "the test needs models stopping at different epochs"


def test_stacked_train_accuracy_target_and_full_accuracy():
    seeds = [7, 8]
    trains = [_data(30 + s, 32) for s in seeds]
    settings = TrainSettings(epochs=10, batch_size=8, learning_rate=3e-3)
    options = {"stop_at_train_accuracy": 0.8, "full_train_accuracy": True}
    alone, h_alone = _alone("cnn2", seeds, trains, settings, **options)
    stacked = _models("cnn2", seeds)
    h_stacked = train_stacked(stacked, trains, settings, seeds, ["a", "b"], **options)
    _assert_same(alone, h_alone, stacked, h_stacked, settings.learning_rate)


def test_train_models_engines_agree_and_record_tests():
    """``engine: stacked`` and ``engine: plain`` give the same models and histories (test
    accuracy included); ``auto`` on a CPU is the plain loop, bit for bit."""
    seeds = [1, 2]
    trains = [_data(40 + s, 24) for s in seeds]
    tests = [_data(50 + s, 12) for s in seeds]
    results = {}
    for engine in ("plain", "stacked", "auto"):
        settings = TrainSettings(epochs=2, batch_size=8, learning_rate=1e-3, engine=engine)
        models = _models("cnn2", seeds)
        histories = train_models(models, trains, settings, seeds, ["a", "b"], tests=tests)
        assert all("test_accuracy" in r for h in histories for r in h)
        results[engine] = (models, histories)
    _assert_same(*results["plain"], *results["stacked"], learning_rate=1e-3)
    for a, b in zip(results["plain"][0], results["auto"][0], strict=True):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key])


def test_the_weight_check_can_fail():
    """The tolerances of ``_weights_close`` and ``LOSS_RTOL`` are far below the distance between
    two seeds' models after the same training, and below one learning-rate step per element."""
    seeds = [3, 4]
    trains = [_data(3, 40)] * 2
    settings = TrainSettings(epochs=3, batch_size=16, learning_rate=1e-3, optimizer="adam")
    models, histories = _alone("minicnn", seeds, trains, settings, full_train_accuracy=False)
    assert not _weights_close(models[0], models[1], settings.learning_rate)[0]
    # and the loss tolerance is far below the two seeds' epoch losses' difference
    for a, b in zip(*histories, strict=True):
        assert a["loss"] != pytest.approx(b["loss"], rel=LOSS_RTOL)  # seen: 8e-4 to 3e-2 apart
    nudged = _models("minicnn", [3])[0]
    nudged.load_state_dict(models[0].state_dict())
    with torch.no_grad():
        next(nudged.parameters()).add_(settings.learning_rate)
    assert not _weights_close(models[0], nudged, settings.learning_rate)[0]


def test_stack_refuses_mixed_models_and_sizes():
    models = _models("cnn2", [0]) + _models("minicnn", [1])
    trains = [_data(0, 8), _data(1, 8)]
    assert "architecture" in stack_reason(models, trains)
    assert "batch norm" in stack_reason(_models("minicnn_bn", [0, 1]), [_data(0, 8)] * 2)
    assert "size" in stack_reason(_models("cnn2", [0, 1]), [_data(0, 8), _data(1, 9)])
    with pytest.raises(DataError, match="cannot train as one stack"):
        train_stacked(models, trains, TrainSettings(1, 4, 1e-3), [0, 1], ["a", "b"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("rates", [None, [1e-3, 1e-4, 3e-4]], ids=["one-rate", "own-rates"])
def test_graphed_stack_equals_alone_on_cuda(rates):
    device = torch.device("cuda")
    seeds = [0, 1, 2]
    trains = [tuple(t.to(device) for t in _data(s, 200)) for s in seeds]
    settings = TrainSettings(epochs=3, batch_size=32, learning_rate=1e-3)
    own = rates or [settings.learning_rate] * len(seeds)
    alone = [m.to(device) for m in _models("minicnn", seeds)]
    h_alone = [
        train_classifier(
            m,
            t,
            None,
            dataclasses.replace(settings, learning_rate=rate),
            s,
            "alone",
            full_train_accuracy=False,
        )
        for m, t, s, rate in zip(alone, trains, seeds, own, strict=True)
    ]
    stacked = [m.to(device) for m in _models("minicnn", seeds)]
    h_stacked = train_stacked(
        stacked, trains, settings, seeds, ["a", "b", "c"], learning_rates=rates
    )
    for a, b, ha, hb, rate in zip(alone, stacked, h_alone, h_stacked, own, strict=True):
        _assert_same([a], [ha], [b], [hb], rate, atol=1e-3)
