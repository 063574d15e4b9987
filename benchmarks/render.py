"""BENCHMARKS.md from the results JSON: one section per device kind, the done-when checks first,
the written analysis (``benchmarks/analysis.md``) last."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import PAIR, spread


def fmt(x: float, digits: int = 0) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.{max(digits, 1)}f}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def device_title(result: dict) -> str:
    m = result["machine"]
    if result["device_kind"] == "cuda":
        return f"GPU: {m.get('gpu', m['device'])}"
    return f"CPU: {m['cpu']} ({m['cpu_count']} cores)"


def render_device(result: dict) -> list[str]:
    m = result["machine"]
    lines = [f"## {device_title(result)}", ""]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines += [
        f"- date: {m['date_utc']}; host `{m['host']}`; {m['platform']}; Python {m['python']}",
        f"- packages: {pkgs}" + (f"; CUDA {m['cuda']}" if "cuda" in m else ""),
        f"- torch threads: {m['torch_threads']}; repeats: {result['repeats']} (medians; spread ="
        " (max - min) / median of the repeats)"
        + ("; **quick run**" if result.get("quick") else ""),
        f"- load average (1, 5, 15 min) at start {result['load_start']}, at end "
        f"{result['load_end']}" + (f" on {m['cpu_count']} cores" if m.get("cpu_count") else ""),
        f"- wall time of the suite: {result['wall_s']:.0f} s",
    ]
    if result.get("note"):
        lines.append(f"- note: {result['note']}")
    lines.append("")
    clock = (
        "rates per second of this process's CPU time (the machine is shared; wall-clock figures "
        "are in the JSON and in the wall-clock columns)"
        if result["device_kind"] == "cpu"
        else "wall-clock rates (CUDA synchronised)"
    )
    lines += [f"All rates are {clock}.", ""]
    if "limit" in result:
        lines += [
            "### The limit: forward+backward to the input (parameters frozen), rows/s by pass size",
            "",
        ]
        sizes = sorted(
            {int(s) for v in result["limit"].values() for s in v["by_pass_size"]}, key=int
        )
        lines.append("| model | image | " + " | ".join(str(s) for s in sizes) + " | best |")
        lines.append("|---|---|" + "---:|" * len(sizes) + "---:|")
        for key, v in result["limit"].items():
            arch, shape = key.split(" ")
            cells = []
            for s in sizes:
                e = v["by_pass_size"].get(str(s))
                cells.append(fmt(e["median"]) if e else "-")
            lines.append(
                f"| {arch} | {shape} | " + " | ".join(cells) + f" | **{v['best_pass_size']}** |"
            )
        lines.append("")
    if "saliency" in result:
        lines += [
            "### Saliency maps/s: our engine vs the limit / k and vs Captum's default call",
            "",
            "| model | image | method | k | pass (auto) | limit / k | engine | engine / (limit/k) "
            "| spread | wall-clock ratio | Captum default | engine / Captum |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, v in result["saliency"].items():
            arch, shape = key.split(" ")
            for method, e in v["methods"].items():
                captum = e.get("captum_maps_per_s")
                vs = e.get("engine_over_captum")
                lines.append(
                    f"| {arch} | {shape} | {method} | {e['k']} | {v['pass_size_auto']} | "
                    f"{fmt(e['limit_over_k'])} | {fmt(e['engine_maps_per_s']['median'])} | "
                    f"**{e['ratio_to_limit']['median']:.2f}** | "
                    f"{pct(e['ratio_to_limit']['spread'])} | "
                    f"{e['wall']['ratio_to_limit']['median']:.2f} | "
                    + (f"{fmt(captum['median'])} | {vs['median']:.2f}x |" if captum else "n/a | |")
                )
        lines.append("")
    if "training" in result:
        lines += [
            "### Training images/s (`train_classifier`, batch 64, per-epoch evaluation included)",
            "",
            "| what | option | images/s | spread | wall-clock images/s |",
            "|---|---|---:|---:|---:|",
        ]
        for key, v in result["training"].items():
            what, option = key.split(" | ")
            s, w = v["images_per_s"], v["images_per_s_wall"]
            lines.append(
                f"| {what} | {option} | {fmt(s['median'])} | {pct(s['spread'])} | "
                f"{fmt(w['median'])} |"
            )
        lines.append("")
    if "zarr" in result:
        z = result["zarr"]
        w, r = z["write_MB_per_s"], z["random_batches_per_s"]
        lines += [
            f"### Zarr: {z['maps']:,} float32 maps 3x32x32 ({z['bytes'] / 2**20:.0f} MB), "
            f"chunks of {z['chunk']} maps",
            "",
            "| measurement | MB/s or batches/s | spread |",
            "|---|---:|---:|",
            f"| write: `ChunkedMapWriter` (pipeline) | {fmt(w['zarr_writer']['median'])} MB/s | "
            f"{pct(w['zarr_writer']['spread'])} |",
            f"| write: `np.save` | {fmt(w['numpy_save']['median'])} MB/s | "
            f"{pct(w['numpy_save']['spread'])} |",
            f"| write: raw `tofile` | {fmt(w['raw_tofile']['median'])} MB/s | "
            f"{pct(w['raw_tofile']['spread'])} |",
            f"| **Zarr / np.save write throughput** (median of per-repeat ratios) | "
            f"**{z['zarr_over_numpy_write']:.2f}** | "
            f"{pct(spread(z.get('zarr_over_numpy_write_runs', [1.0])))} |",
        ]
        if "durable_write_MB_per_s" in z:
            d = z["durable_write_MB_per_s"]
            lines += [
                f"| durable write (until `os.sync()` returns): `ChunkedMapWriter` | "
                f"{fmt(d['zarr_writer']['median'])} MB/s | {pct(d['zarr_writer']['spread'])} |",
                f"| durable write: `np.save` | {fmt(d['numpy_save']['median'])} MB/s | "
                f"{pct(d['numpy_save']['spread'])} |",
                f"| **Zarr / np.save, durable** | **{z['zarr_over_numpy_durable']:.2f}** | |",
            ]
        lines += [
            f"| read: whole chunks from Zarr | {fmt(z['zarr_chunk_read_MB_per_s']['median'])} MB/s"
            f" | {pct(z['zarr_chunk_read_MB_per_s']['spread'])} |",
            f"| read: random {r['batch']}-map batches, Zarr | {fmt(r['zarr']['median'], 1)} "
            f"batches/s | {pct(r['zarr']['spread'])} |",
            f"| read: random {r['batch']}-map batches, memory-mapped .npy | "
            f"{fmt(r['npy_mmap']['median'], 1)} batches/s | {pct(r['npy_mmap']['spread'])} |",
            "",
        ]
    if "rss" in result:
        lines += [
            "### Peak RSS of a saliency job (`compute_saliency_maps` in a subprocess)",
            "",
            "| job | pass size | images | peak RSS | maps/s | images (10x) | peak RSS | maps/s "
            "| growth |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, v in result["rss"].items():
            (n1, a), (n2, b) = sorted(v["by_images"].items(), key=lambda kv: int(kv[0]))
            lines.append(
                f"| {key} | {v.get('pass_size', 'auto')} | {int(n1):,} | "
                f"{a['peak_rss_MB']['median']:.0f} MB | "
                f"{fmt(a['maps_per_s']['median'])} | {int(n2):,} | "
                f"{b['peak_rss_MB']['median']:.0f} MB | {fmt(b['maps_per_s']['median'])} | "
                f"**{v['growth']:+.1%}** |"
            )
        lines.append("")
    if "gpu_training" in result:
        lines += render_gpu_training(result["gpu_training"])
    return lines


def render_gpu_training(section: dict) -> list[str]:
    """The ``gpu-training`` table (:mod:`benchmarks.gpu_training`): images/s of each path and its
    fraction of the large-batch bound at the same precision (median of per-repeat ratios)."""
    lines = [
        "### Training-step throughput (forward, cross-entropy, backward, Adam; "
        "no evaluation) against the large-batch bound",
        "",
        "| model | image | path | precision | models x batch | images/s | spread "
        "| wall-clock images/s | fraction of the bound |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, v in section.items():
        arch, shape = key.split(" ")
        for e in v["paths"].values():
            s, w = e["images_per_s"], e["images_per_s_wall"]
            lines.append(
                f"| {arch} | {shape} | {e['label']} | {e['precision']} | "
                f"{e['models']} x {e['batch']} | {fmt(s['median'])} | {pct(s['spread'])} | "
                f"{fmt(w['median'])} | **{e['fraction_of_bound']['median']:.2f}** |"
            )
    lines.append("")
    return lines


def done_when(result: dict) -> list[str]:
    """The issue's acceptance checks, evaluated on one result."""
    lines = []
    if "saliency" in result:
        worst = min(
            (e["ratio_to_limit"]["median"], f"{key} {m}")
            for key, v in result["saliency"].items()
            for m, e in v["methods"].items()
            if m in PAIR
        )
        vs = [
            (e["engine_over_captum"]["median"], f"{key} {m}")
            for key, v in result["saliency"].items()
            for m, e in v["methods"].items()
            if m in PAIR and "engine_over_captum" in e
        ]
        ok = "yes" if worst[0] >= 0.85 else "NO"
        lines.append(
            f"- Grad/SG/IG >= 0.85 x limit/k for every model: **{ok}** (lowest "
            f"{worst[0]:.2f}, {worst[1]})"
        )
        if vs:
            low = min(vs)
            ok = "yes" if low[0] >= 1.0 else "NO"
            lines.append(
                f"- at least as fast as Captum's default call: **{ok}** (lowest engine/Captum "
                f"{low[0]:.2f}x, {low[1]})"
            )
    if "rss" in result:
        worst = max((v["growth"], k) for k, v in result["rss"].items())
        ok = "yes" if worst[0] < 0.20 else "NO"
        lines.append(
            f"- peak RSS grows < 20% from N to 10N: **{ok}** (largest {worst[0]:+.1%}, {worst[1]})"
        )
    if "zarr" in result:
        r = result["zarr"]["zarr_over_numpy_write"]
        ok = "yes" if r >= 0.5 else "NO"
        durable = result["zarr"].get("zarr_over_numpy_durable")
        lines.append(
            f"- Zarr writes >= half of numpy's throughput: **{ok}** ({r:.2f} into the page cache"
            + (f", {durable:.2f} durable)" if durable is not None else ")")
        )
    return lines


def choose_results(results_dir: Path) -> dict[str, dict]:
    """The result rendered per device kind ("cpu", "cuda"): the newest full run (file names sort
    by time); a quick run only where no full run exists."""
    chosen: dict[str, dict] = {}
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        kind = result["device_kind"]
        old = chosen.get(kind)
        # the newest full run wins; a quick run only where no full run exists
        if (
            old is None
            or (old.get("quick") and not result.get("quick"))
            or (old.get("quick") == result.get("quick"))
        ):
            chosen[kind] = result
    return chosen


def render_markdown(chosen: dict[str, dict], notes: Path | None = None) -> str:
    """BENCHMARKS.md's text for :func:`choose_results`'s results."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/run.py` (run it with `.venv/bin/python benchmarks/run.py`; "
        "`--quick` for a smoke run, `--device cuda` on a GPU; `--report` rewrites this file from "
        "`benchmarks/results/*.json`). The suite is not part of CI's tests. What each figure "
        "means is in the docstring of `benchmarks/run.py`; the analysis is in the last section.",
        "",
    ]
    for kind in ("cpu", "cuda"):
        if kind in chosen:
            scope = (
                "the issue's targets, set for these CPUs"
                if kind == "cpu"
                else "the same checks for reference; see the analysis"
            )
            lines += [f"**Done-when checks ({device_title(chosen[kind])}; {scope})**", ""]
            lines += done_when(chosen[kind]) + [""]
    for kind in ("cpu", "cuda"):
        if kind in chosen:
            lines += render_device(chosen[kind])
    if notes and notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def write_markdown(results_dir: Path, target: Path, notes: Path | None = None) -> None:
    target.write_text(render_markdown(choose_results(results_dir), notes))
    print(f"wrote {target}")
