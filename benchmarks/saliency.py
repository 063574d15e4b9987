"""The limit (forward+backward to the input, by pass size) and saliency maps/s of our engine and
Captum's default call."""

from __future__ import annotations

import math

import torch

from benchmarks.common import PAIR, median, summary, timed
from saliency_fingerprints.saliency import METHODS, build_method, input_gradients, tune_pass_size


def rows_rate(model, rows: torch.Tensor, device: torch.device, min_time: float) -> dict:
    """The limit at one pass size: rows/s of forward+backward to the input (both clocks)."""
    targets = torch.zeros(rows.shape[0], dtype=torch.long, device=device)
    input_gradients(model, rows, targets)  # warm-up
    t = timed(lambda: input_gradients(model, rows, targets), device, min_time)
    return {k: rows.shape[0] / v for k, v in t.items()}


def measure_limit(model, shape, device, sizes, repeats, min_time) -> dict:
    """Rows/s of forward+backward to the input per pass size (interleaved repeats)."""
    runs: dict[int, list[dict]] = {s: [] for s in sizes}
    generator = torch.Generator().manual_seed(1)
    for _ in range(repeats):
        for size in list(runs):
            rows = torch.rand((size, *shape), generator=generator).to(device)
            try:
                runs[size].append(rows_rate(model, rows, device, min_time))
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                runs.pop(size)
    table = {str(s): summary([r["primary"] for r in v]) for s, v in runs.items() if v}
    wall = {str(s): summary([r["wall"] for r in v]) for s, v in runs.items() if v}
    best = max(table, key=lambda s: table[s]["median"])
    return {
        "by_pass_size": table,
        "by_pass_size_wall": wall,
        "best_pass_size": int(best),
        "rows_per_s": table[best],
    }


def captum_call(method: str, model, images, targets):
    """Captum's default call for the same work (NOTES.md): everything in one call, no internal
    batching; PAIR's SmoothGrad is Captum's smoothgrad_sq with an absolute std."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    if method == "grad":
        return lambda: Saliency(model).attribute(images, target=targets, abs=False)
    if method == "smoothgrad":
        stdev = float(0.15 * (images.max() - images.min()))
        return lambda: NoiseTunnel(Saliency(model)).attribute(
            images, nt_type="smoothgrad_sq", nt_samples=25, stdevs=stdev, target=targets, abs=False
        )
    if method == "integrated_gradients":
        return lambda: IntegratedGradients(model).attribute(
            images, baselines=0.0, target=targets, n_steps=25, method="riemann_trapezoid"
        )
    return None


def bench_saliency(
    model,
    shape,
    device,
    limit: dict,
    *,
    repeats: int,
    min_time: float,
    work: float,
    mp_iterations: int,
) -> dict:
    """Maps/s of each method with our engine and Captum, interleaved with the limit.

    ``work``: seconds of work per call at the limit; ``limit``: :func:`measure_limit`'s result.
    """
    try:
        import captum  # noqa: F401

        have_captum = True
    except ImportError:
        have_captum = False
    pass_size = tune_pass_size(model, shape, device)
    best = limit["best_pass_size"]
    rate = limit["rows_per_s"]["median"]
    # rows per call: about `work` seconds at the limit, at least 4 of the best passes where
    # memory allows (Captum's default call puts them all in one pass)
    budget = (64 << 20) if device.type == "cuda" else (24 << 20)
    max_rows = max(4 * best, budget // (math.prod(shape) * 4))
    methods = dict(PAIR)
    if "meaningful_perturbation" in METHODS:
        methods["meaningful_perturbation"] = {"iterations": mp_iterations}
    generator = torch.Generator().manual_seed(2)
    out = {"pass_size_auto": pass_size, "methods": {}}
    for method, params in methods.items():
        engine = build_method(method, model, params, pass_size)
        k = engine.gradient_evaluations
        if method == "meaningful_perturbation":  # one group of masks per call
            n = max(8, min(pass_size, 1024))
        else:
            n = max(8, int(min(rate * work, max_rows) // k))
        images = torch.rand((n, *shape), generator=generator).to(device)
        with torch.no_grad():
            targets = model(images).argmax(1)
        ids = list(range(n))
        rows = torch.rand((best, *shape), generator=generator).to(device)

        def ours(engine=engine, images=images, targets=targets, ids=ids):
            return engine.attribute(images, targets, ids)

        theirs = captum_call(method, model, images, targets) if have_captum else None
        record = {"limit": [], "engine": [], "captum": []}
        wall = {"limit": [], "engine": [], "captum": []}
        ours()  # warm-up
        for _ in range(repeats):
            lim = rows_rate(model, rows, device, min_time)
            record["limit"].append(lim["primary"])
            wall["limit"].append(lim["wall"])
            t = timed(ours, device, min_time)
            record["engine"].append(n / t["primary"])
            wall["engine"].append(n / t["wall"])
            if theirs is not None:
                try:
                    t = timed(theirs, device, min_time)
                    record["captum"].append(n / t["primary"])
                    wall["captum"].append(n / t["wall"])
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    theirs = None
        ratios = [e / (lim / k) for e, lim in zip(record["engine"], record["limit"], strict=True)]
        wall_ratios = [e / (lim / k) for e, lim in zip(wall["engine"], wall["limit"], strict=True)]
        entry = {
            "k": k,
            "params": engine.params(),
            "images_per_call": n,
            "limit_rows_per_s": summary(record["limit"]),
            "limit_over_k": median(record["limit"]) / k,
            "engine_maps_per_s": summary(record["engine"]),
            "ratio_to_limit": summary(ratios),
            "wall": {
                "limit_rows_per_s": summary(wall["limit"]),
                "engine_maps_per_s": summary(wall["engine"]),
                "ratio_to_limit": summary(wall_ratios),
            },
        }
        if record["captum"]:
            vs = [e / c for e, c in zip(record["engine"], record["captum"], strict=False)]
            entry["captum_maps_per_s"] = summary(record["captum"])
            entry["engine_over_captum"] = summary(vs)
            entry["wall"]["captum_maps_per_s"] = summary(wall["captum"])
        out["methods"][method] = entry
        print(
            f"    {method:22s} k={k:3d} engine {median(record['engine']):9.1f} maps/s  "
            f"ratio {median(ratios):.3f}"
            + (
                f"  captum {median(record['captum']):9.1f} maps/s"
                if record["captum"]
                else "  captum n/a"
            ),
            flush=True,
        )
    return out
