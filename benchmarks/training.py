"""Training images/s of the pipeline's ``train_classifier`` (per-epoch evaluation included)."""

from __future__ import annotations

import torch

from benchmarks.common import MODELS, SHAPES, median, summary, timed
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import synchronize


def bench_training(device, *, repeats: int, train_images: int, quick: bool = False) -> dict:
    """Primaries (each architecture, CIFAR and digits sizes) and the secondary MiniCNN, one
    epoch of ``train_images`` at batch 64; on CUDA also the opt-in precision/layout options,
    on a CPU (not ``quick``) ``channels_last``."""
    from saliency_fingerprints.training import TrainSettings, train_classifier

    n_train = train_images
    cases = [(f"primary {a}", a, SHAPES["cifar"], 10) for a in MODELS]
    cases += [(f"primary {a} (digits)", a, SHAPES["digits"], 10) for a in MODELS]
    cases.append(("secondary minicnn", "minicnn", (1, 32, 32), 2))
    options = [("default", {})]
    if device.type == "cuda":
        options += [
            ("channels_last", {"channels_last": True}),
            ("tf32", {"tf32": True}),
            ("bf16 autocast", {"autocast": "bf16"}),
            ("all three", {"channels_last": True, "tf32": True, "autocast": "bf16"}),
        ]
    elif not quick:
        options.append(("channels_last", {"channels_last": True}))
    results = {}
    generator = torch.Generator().manual_seed(3)
    for label, arch, shape, classes in cases:
        x = torch.rand((n_train, *shape), generator=generator).to(device)
        y = torch.randint(0, classes, (n_train,), generator=generator).to(device)
        xt, yt = x[: n_train // 8], y[: n_train // 8]
        for option, extra in options:
            if option != "default" and (
                "digits" in label or arch != "minicnn" and "resnet" not in arch
            ):
                continue  # the options on MiniCNN (secondary) and MiniResNet at 32x32 only
            settings = TrainSettings(1, 64, 1e-3, **extra)
            runs, walls = [], []
            for repeat in range(repeats):
                torch.manual_seed(repeat)
                model = build_model(arch, shape[0], shape[1], classes).to(device)
                train_classifier(model, (x[:256], y[:256]), (xt, yt), settings, 0)  # warm-up
                synchronize(device)
                t = timed(
                    lambda: train_classifier(model, (x, y), (xt, yt), settings, repeat),  # noqa: B023
                    device,
                    0.0,
                )
                runs.append(n_train / t["primary"])
                walls.append(n_train / t["wall"])
            results[f"{label} | {option}"] = {
                "images_per_s": summary(runs),
                "images_per_s_wall": summary(walls),
                "train_images": n_train,
                "batch_size": 64,
            }
            print(f"    {label:28s} {option:14s} {median(runs):9.1f} images/s", flush=True)
    return results
