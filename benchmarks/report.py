"""Turn one benchmark run's results into ``results.json``, ``results.md`` (tables with the
ratios ours / raw ceiling and ours / TorchServe, and the issue's targets) and ``results.png``
(throughput and p99 latency against concurrency, one row of plots per model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIN_TRUSTED_COMPLETIONS = 20


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _batch(mean: float) -> str:
    # TorchServe sends no x-batch-size header.
    return "-" if math.isnan(mean) else f"{mean:.2f}"


def _rate(point: dict[str, Any]) -> str:
    # Too few completions in the window (it must span several p99s): say so, do not trust it.
    n = point["completed"]
    return f"{point['throughput']:.2f}" + (f" (n={n}!)" if n < MIN_TRUSTED_COMPLETIONS else "")


def _best_torchserve(systems: dict[str, Any], concurrency: int) -> float | None:
    rates = [
        p["throughput"]
        for name, s in systems.items()
        if name.startswith("torchserve")
        for p in s["points"]
        if p["concurrency"] == concurrency
    ]
    return max(rates) if rates else None


def model_table(model: str, result: dict[str, Any], cpus: int) -> list[str]:
    """Markdown rows for one model: every system at every concurrency level."""
    raw = result.get("raw")
    ceiling = raw["best"]["images_per_s"] if raw else None
    lines = [f"### {model}", ""]
    if raw:
        b, b1, single = raw["best"], raw["best_batch1"], raw["single_request"]
        lines += [
            f"Raw ceiling (in-process, decode + preprocess + forward): **{b['images_per_s']:.2f} img/s** "
            f"({b['processes']} proc x {b['threads']} thr, batch {b['batch_size']}); batch 1: "
            f"{b1['images_per_s']:.2f} img/s ({b1['processes']} x {b1['threads']}); single request "
            f"with all threads: p50 {single['latency_p50_ms']:.0f} ms.",
            "",
        ]
    lines += [
        "| system | conc | req/s | p50 ms | p90 ms | p99 ms | errors | mean batch | /raw | ours/TS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, system in result["systems"].items():
        for p in system["points"]:
            ts = _best_torchserve(result["systems"], p["concurrency"])
            vs_ts = _ratio(p["throughput"], ts) if not name.startswith("torchserve") else ""
            lines.append(
                f"| {name} | {p['concurrency']} | {_rate(p)} | {p['p50_ms']:.0f} | "
                f"{p['p90_ms']:.0f} | {p['p99_ms']:.0f} | {p['errors']} | {_batch(p['mean_batch'])} | "
                f"{_ratio(p['throughput'], ceiling)} | {vs_ts} |"
            )
    starts = {n: s["first_prediction_s"] for n, s in result["systems"].items() if s.get("first_prediction_s")}
    if starts:
        lines += ["", "Start to first prediction: " + ", ".join(f"{n} {v:.1f} s" for n, v in starts.items())]
    return [*lines, "", *cpu_table(result, cpus)]


MAX_ROLE_COLUMNS = 7


def cpu_table(result: dict[str, Any], cpus: int) -> list[str]:
    """CPU ms per request by part of the stack (benchmarks/cpu_usage.py), next to what the raw
    ceiling spends per image: the difference is the serving overhead, and its owners."""
    rows = [
        (name, p["concurrency"], p["cpu_ms_per_request"])
        for name, system in result["systems"].items()
        for p in system["points"]
        if p.get("cpu_ms_per_request")
    ]
    if not rows:
        return []
    weight: dict[str, float] = {}
    for _, _, spent in rows:
        for role, ms in spent.items():
            if role != "total":
                weight[role] = weight.get(role, 0.0) + ms
    roles = sorted(weight, key=lambda r: -weight[r])[:MAX_ROLE_COLUMNS]
    raw = result.get("raw")
    lines = ["CPU ms per request, by process (inside the measuring window)"]
    if raw:
        per_image = cpus * 1000 / raw["best"]["images_per_s"]
        lines[0] += f"; the raw ceiling spends {per_image:.1f} CPU ms per image on {cpus} cores"
    lines += [
        "",
        "| system | conc | " + " | ".join(roles) + " | rest | total |",
        "|---|---:|" + "---:|" * (len(roles) + 2),
    ]
    for name, conc, spent in rows:
        rest = spent["total"] - sum(spent.get(r, 0.0) for r in roles)
        cells = " | ".join(f"{spent.get(r, 0.0):.1f}" for r in roles)
        lines.append(f"| {name} | {conc} | {cells} | {rest:.1f} | {spent['total']:.1f} |")
    return [*lines, ""]


def _point(system: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    return next((p for p in system["points"] if p["concurrency"] == concurrency), None)


def outside_model_ms(point: dict[str, Any], per_image_ms: float) -> float | None:
    """CPU ms a request costs beyond what the raw ceiling spends on one image (the model's own
    decode, preprocess and forward), the load generator left out."""
    spent = point.get("cpu_ms_per_request") or {}
    if "total" not in spent:
        return None
    return spent["total"] - spent.get("load generator", 0.0) - per_image_ms


def targets_table(results: dict[str, Any]) -> list[str]:
    """Issue 12's targets next to what this run measured (ours = the shipped default)."""
    rows = ["| target | measured | met |", "|---|---|---|"]

    def row(name: str, value: str, ok: bool | None) -> None:
        rows.append(f"| {name} | {value} | {'-' if ok is None else ('yes' if ok else 'no')} |")

    cpus = results.get("meta", {}).get("cpus", 1)
    for model, result in results["models"].items():
        ours, best = result["systems"].get("ours:default"), result["systems"].get("torchserve:best")
        raw = result.get("raw")
        if ours and best:
            for c in (4, 16, 64):
                a, b = _point(ours, c), _point(best, c)
                if a and b:
                    ratio = a["throughput"] / b["throughput"]
                    row(
                        f"{model}: req/s >= 1.05 x TorchServe best at conc {c}", f"{ratio:.2f}", ratio >= 1.05
                    )
            a, b = _point(ours, 16), _point(best, 16)
            if a and b:
                row(f"{model}: conc-16 p99 <= TorchServe best's", f"{a['p99_ms']:.0f} / {b['p99_ms']:.0f} ms",
                    a["p99_ms"] <= b["p99_ms"])  # fmt: skip
            a, b = _point(ours, 1), _point(best, 1)
            if a and b:
                row(f"{model}: conc-1 p50 <= TorchServe best's", f"{a['p50_ms']:.0f} / {b['p50_ms']:.0f} ms",
                    a["p50_ms"] <= b["p50_ms"])  # fmt: skip
        if ours and raw:
            single, a = raw["single_request"]["latency_p50_ms"], _point(ours, 1)
            if a:
                value = f"{a['p50_ms']:.0f} ms = {a['p50_ms'] / single:.2f} x"
                name = f"{model}: conc-1 p50 <= 1.2 x in-process all cores ({single:.0f} ms)"
                row(name, value, a["p50_ms"] <= 1.2 * single)
        if ours and best and raw:
            per_image = cpus * 1000 / raw["best"]["images_per_s"]
            for c in (4, 16, 64):
                a, b = _point(ours, c), _point(best, c)
                ours_ms = outside_model_ms(a, per_image) if a else None
                theirs_ms = outside_model_ms(b, per_image) if b else None
                if ours_ms is not None and theirs_ms is not None:
                    row(f"{model}: CPU ms per request outside the model <= TorchServe's at conc {c}",
                        f"{ours_ms:.1f} / {theirs_ms:.1f}", ours_ms <= theirs_ms)  # fmt: skip
    start = results.get("start")
    if start:
        row("make serve: start to first prediction <= 10 s", f"{start['first_prediction_s']:.1f} s",
            start["first_prediction_s"] <= 10)  # fmt: skip
    reg = results.get("register")
    if reg:
        v = reg["first_prediction_s"]
        row("register resnet18 (.mar) to first prediction <= 3 s", f"{v:.2f} s", v <= 3)
    mem = results.get("memory", {})
    if "ours" in mem and "torchserve" in mem:
        ours_mb, theirs_mb = mem["ours"]["pss_mb"], mem["torchserve"]["pss_mb"]
        value = f"{ours_mb:.0f} / {theirs_mb:.0f} MB = {ours_mb / theirs_mb:.2f}"
        row("idle PSS, 1 model x 2 replicas <= TorchServe with 2 workers", value, ours_mb <= theirs_mb)
    elif "ours" in mem:
        row("idle PSS, 1 model x 2 replicas", f"{mem['ours']['pss_mb']:.0f} MB (no TorchServe run)", None)
    idle = results.get("idle")
    if idle:
        for name, percent in idle.items():
            if name.startswith("ours"):
                row(
                    f"idle CPU, {name[6:]} <= 5 % of one core",
                    f"{percent['total']:.2f} %",
                    percent["total"] <= 5,
                )
    return rows


def memory_lines(memory: dict[str, Any]) -> list[str]:
    """Idle PSS by part of the stack, for each system measured."""
    lines = []
    for system, entry in memory.items():
        parts = ", ".join(f"{role} {mb:.0f}" for role, mb in entry.get("by_role", {}).items())
        if parts:
            lines.append(f"- {system}: {entry['pss_mb']:.0f} MB in {entry['processes']} processes ({parts})")
    return ["## Idle memory (PSS, MB)", "", *lines, ""] if lines else []


def write_markdown(results: dict[str, Any], path: Path) -> None:
    meta = results["meta"]
    lines = [
        "# Serving benchmark",
        "",
        f"{meta['date']} on {meta['host']} ({meta['cpus']} CPUs), torch {meta['torch']}, ray {meta['ray']}. "
        f"{meta['duration_s']:g} s per point after {meta['warmup_s']:g} s warm-up; closed-loop clients; "
        f"image {meta['image']}. Systems in run order: {', '.join(meta['order'])}. "
        f"Load average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']}: "
        "well above 0 means other work shared the CPUs and every number here is pessimistic.",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        "## Throughput and latency",
        "",
    ]
    for model, result in results["models"].items():
        lines += model_table(model, result, meta["cpus"])
    lines += memory_lines(results.get("memory", {}))
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput and p99 against concurrency; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install '.[bench]')")
        return False
    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        result = results["models"][model]
        tput, p99 = axes[row]
        for name, system in result["systems"].items():
            xs = [p["concurrency"] for p in system["points"]]
            tput.plot(xs, [p["throughput"] for p in system["points"]], marker="o", label=name)
            p99.plot(xs, [p["p99_ms"] for p in system["points"]], marker="o", label=name)
        if result.get("raw"):
            tput.axhline(
                result["raw"]["best"]["images_per_s"], color="k", linestyle="--", label="raw ceiling"
            )
        for ax, title in ((tput, "throughput (req/s)"), (p99, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_title(f"{model}: {title}")
            ax.grid(True, alpha=0.3)
        p99.set_yscale("log")
        tput.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_all(results: dict[str, Any], out: Path) -> None:
    """results.json, results.md and results.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "results.md")
    plot(results, out / "results.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
