"""What ``raytorch tune`` tries and how it chooses, without a server: the layouts to measure,
the config each one is, the rule that picks the winner, and the table that shows why.

A layout sets only fields the config already has (``deployments/common/settings.py``): the
model's ``torch_threads``, ``batching.max_batch_size`` and ``batching.batch_wait_timeout_s``,
``resources.num_replicas`` and ``resources.num_cpus`` (so that the replicas fit on the machine).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

from deployments.common.naming import model_deployment_name
from deployments.common.settings import IngressArgs, ModelAppArgs, PoolArgs

# A throughput target is reached at this fraction of it (a window of a few seconds counts
# whole requests: one more or less at its edges must not decide), with no error or dropped request.
TARGET_FRACTION = 0.95
# deployments/model/builder.py's requests per batch slot (a unit test keeps the two equal;
# importing the builder would import Ray and torch into the command).
ONGOING_PER_BATCH = 8


@dataclass(frozen=True)
class Layout:
    """One setting of the tuned fields. ``torch_threads`` None is the default chooser."""

    replicas: int
    torch_threads: int | None
    max_batch_size: int
    batch_wait_s: float
    num_cpus: float

    def threads_label(self) -> str:
        return "auto" if self.torch_threads is None else str(self.torch_threads)

    def key(self) -> tuple:
        """What makes two layouts the same measurement (num_cpus follows from the replicas)."""
        return (self.replicas, self.torch_threads, self.max_batch_size, self.batch_wait_s)


@dataclass(frozen=True)
class Goal:
    """The load the user names: ``target_rps`` (open loop at that rate), or a p99 bound
    ``latency_ms`` at ``concurrency`` closed-loop clients."""

    target_rps: float | None = None
    latency_ms: float | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if (self.target_rps is None) == (self.latency_ms is None):
            raise ValueError("name one goal: --target-rps N, or --latency-ms L with --concurrency C")
        if self.target_rps is not None and self.target_rps <= 0:
            raise ValueError(f"--target-rps must be above 0, not {self.target_rps:g}")
        if self.latency_ms is not None and (self.concurrency is None or self.concurrency < 1):
            raise ValueError("--latency-ms needs --concurrency C (closed-loop clients, >= 1)")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise ValueError(f"--latency-ms must be above 0, not {self.latency_ms:g}")

    def describe(self) -> str:
        if self.target_rps is not None:
            return f"reach {self.target_rps:g} req/s (open loop) with the lowest p99"
        return f"the highest throughput with p99 <= {self.latency_ms:g} ms at concurrency {self.concurrency}"


@dataclass
class Row:
    """One layout measured: throughput (req/s) and latency (ms) of successful answers."""

    layout: Layout
    phase: str  # "config" (as given), "layout" (replicas x threads), "batching"
    throughput: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    errors: int = 0
    mean_batch: float = math.nan
    note: str = ""
    meets: bool = field(default=False)

    @property
    def measured(self) -> bool:
        return self.throughput > 0


def meets_goal(row: Row, goal: Goal) -> bool:
    """Whether ``row`` satisfies the goal (always False for a layout with errors)."""
    if not row.measured or row.errors:
        return False
    if goal.target_rps is not None:
        return row.throughput >= TARGET_FRACTION * goal.target_rps
    return row.p99_ms <= goal.latency_ms  # type: ignore[operator]


def choose(rows: list[Row], goal: Goal) -> tuple[Row, str]:
    """The winner and why. Throughput target: of the rows that reach it, the lowest p99 (then
    the highest throughput); if none does, the highest throughput. Latency bound: of the rows
    within it, the highest throughput; if none is, the lowest p99. ValueError if no row
    measured anything."""
    measured = [r for r in rows if r.measured]
    if not measured:
        raise ValueError("no layout answered any request")
    for row in rows:
        row.meets = meets_goal(row, goal)
    good = [r for r in measured if r.meets]
    if goal.target_rps is not None:
        if good:
            return min(good, key=lambda r: (r.p99_ms, -r.throughput)), (
                f"reaches {goal.target_rps:g} req/s with the lowest p99 ({len(good)} of {len(rows)} reach it)"
            )
        return max(measured, key=lambda r: r.throughput), (
            f"none reaches {goal.target_rps:g} req/s: the highest throughput"
        )
    if good:
        return max(good, key=lambda r: (r.throughput, -r.p99_ms)), (
            f"the highest throughput with p99 <= {goal.latency_ms:g} ms "
            f"({len(good)} of {len(rows)} within it)"
        )
    return min(measured, key=lambda r: (r.p99_ms, -r.throughput)), (
        f"none keeps p99 <= {goal.latency_ms:g} ms: the lowest p99"
    )


def model_apps(config: dict[str, Any]) -> list[str]:
    """Names of the config's model applications (``deployments.app:build_model``)."""
    return [
        app["name"]
        for app in config.get("applications") or []
        if str(app.get("import_path", "")).endswith(":build_model")
    ]


def app_args(config: dict[str, Any], name: str) -> ModelAppArgs:
    """The typed args of model application ``name`` (pydantic's ValidationError if invalid)."""
    app = next(a for a in config["applications"] if a["name"] == name)
    return ModelAppArgs.model_validate(app.get("args") or {})


def reserved_cpus(config: dict[str, Any], except_app: str) -> float:
    """CPUs Ray reserves for every application of ``config`` but ``except_app``."""
    total = 0.0
    for app in config.get("applications") or []:
        path, args = str(app.get("import_path", "")), app.get("args") or {}
        if app["name"] == except_app:
            continue
        if path.endswith(":build_ingress"):
            ingress = IngressArgs.model_validate(args)
            total += ingress.num_cpus * ingress.num_replicas
        elif path.endswith((":build_model", ":build_pool")):
            model = (
                ModelAppArgs.model_validate(args)
                if path.endswith(":build_model")
                else PoolArgs.model_validate(args)
            )
            total += model.resources.num_cpus * model.resources.num_replicas
    return total


def cpus_per_replica(wanted: float, free_cpus: float, replicas: int) -> float:
    """``wanted`` (the config's num_cpus), lowered so ``replicas`` replicas fit in ``free_cpus``
    (rounded down to 0.05); 0 when they cannot fit at all."""
    share = math.floor(free_cpus / replicas * 20 + 1e-9) / 20
    return max(0.0, min(wanted, share))


def current_layout(args: ModelAppArgs) -> Layout:
    """The layout the config has now."""
    return Layout(
        args.resources.num_replicas,
        args.model.torch_threads,
        args.batching.max_batch_size,
        args.batching.batch_wait_timeout_s,
        args.resources.num_cpus,
    )


def thread_layouts(base: Layout, cores: int, free_cpus: float) -> list[Layout]:
    """Phase one: replicas x threads (fixed one share of the cores, the default chooser, fixed 1),
    most informative first, the config's own layout first of all; batching as configured."""
    replica_counts = sorted({r for r in (cores, cores // 2, 2, 1) if 1 <= r <= cores}, reverse=True)
    candidates = [base]
    for threads in ("share", None, 1):
        for replicas in replica_counts:
            fixed = max(1, cores // replicas) if threads == "share" else threads
            if replicas == 1 and fixed == 1 and cores > 1:
                continue  # one replica with one thread leaves cores idle whatever the load
            cpus = cpus_per_replica(base.num_cpus, free_cpus, replicas)
            if cpus <= 0:
                continue
            candidates.append(Layout(replicas, fixed, base.max_batch_size, base.batch_wait_s, cpus))  # type: ignore[arg-type]
    return _unique(candidates)


def batching_layouts(best: Layout) -> list[Layout]:
    """Phase two, around the best replicas x threads: batch x2, /2, another batch wait, batch 1."""
    size, wait = best.max_batch_size, best.batch_wait_s
    other_wait = 0.005 if wait == 0 else 0.0
    options = [
        (min(512, size * 2), wait),
        (max(1, size // 2), wait),
        (size, other_wait),
        (1, 0.0),
        (min(512, size * 4), wait),
    ]
    return _unique(
        [
            Layout(best.replicas, best.torch_threads, b, w, best.num_cpus)
            for b, w in options
            if (b, w) != (size, wait)
        ]
    )


def _unique(layouts: list[Layout]) -> list[Layout]:
    seen: set[tuple] = set()
    out = []
    for layout in layouts:
        if layout.key() not in seen:
            seen.add(layout.key())
            out.append(layout)
    return out


def split_budget(layouts: int) -> tuple[int, int]:
    """Layouts for phase one and phase two out of ``layouts`` in all (a third to batching)."""
    if layouts < 1:
        raise ValueError(f"--layouts must be at least 1, not {layouts}")
    second = layouts // 3
    return layouts - second, second


def apply_layout(config: dict[str, Any], app: str, layout: Layout) -> dict[str, Any]:
    """A copy of ``config`` with model application ``app`` set to ``layout`` (nothing else
    changes, except a ``max_ongoing_requests`` or ``max_replicas`` the new values would break)."""
    out = copy.deepcopy(config)
    entry = next(a for a in out["applications"] if a["name"] == app)
    args = entry.setdefault("args", {})
    args.setdefault("model", {})["torch_threads"] = layout.torch_threads
    batching = args.setdefault("batching", {})
    batching["max_batch_size"] = layout.max_batch_size
    batching["batch_wait_timeout_s"] = layout.batch_wait_s
    resources = args.setdefault("resources", {})
    resources["num_replicas"] = layout.replicas
    resources["num_cpus"] = layout.num_cpus
    if resources.get("max_ongoing_requests") is not None:
        resources["max_ongoing_requests"] = max(resources["max_ongoing_requests"], layout.max_batch_size)
    if resources.get("max_replicas") is not None:
        resources["max_replicas"] = max(resources["max_replicas"], layout.replicas)
    ModelAppArgs.model_validate(args)  # the written config must load
    return out


def measured_config(config: dict[str, Any], app: str, layout: Layout) -> dict[str, Any]:
    """What is deployed to measure ``layout``: ``app``'s args carry the layout's threads and
    num_cpus (a change of either starts new replicas anyway), while its replicas and batching
    go in Serve's per-deployment overrides (``deployments:`` of the app), which running replicas
    take without a restart: Serve restarts replicas when an app's ``args`` change (its code
    version hashes them), and reconfigures or scales them when only the overrides do. The
    config written at the end (:func:`apply_layout`) carries everything in args instead."""
    original = app_args(config, app)
    if original.resources.max_replicas is not None:  # autoscaling: Serve's overrides would clash
        return apply_layout(config, app, layout)
    fixed = current_layout(original)
    out = apply_layout(
        config, app, replace(fixed, torch_threads=layout.torch_threads, num_cpus=layout.num_cpus)
    )
    entry = next(a for a in out["applications"] if a["name"] == app)
    batching = original.batching.model_dump()
    batching.update(max_batch_size=layout.max_batch_size, batch_wait_timeout_s=layout.batch_wait_s)
    name = model_deployment_name(original.model.name, original.model.version)
    # What the builder derives from the batch size (deployments/model/builder.py), and what
    # apply_layout would write.
    limit = original.resources.max_ongoing_requests
    ongoing = max(limit, layout.max_batch_size) if limit else ONGOING_PER_BATCH * layout.max_batch_size
    override = {
        "name": name,
        "num_replicas": layout.replicas,
        "user_config": batching,
        "max_ongoing_requests": ongoing,
    }
    entry["deployments"] = [d for d in entry.get("deployments") or [] if d.get("name") != name] + [override]
    return out


def restarts_replicas(old: dict[str, Any], new: dict[str, Any], app: str) -> bool:
    """Whether deploying ``new`` over ``old`` starts new replicas of ``app`` (its args differ)."""

    def args(config: dict[str, Any]) -> Any:
        return next((a.get("args") for a in config.get("applications") or [] if a["name"] == app), None)

    return args(old) != args(new)
