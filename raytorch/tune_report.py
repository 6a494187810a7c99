"""The table ``raytorch tune`` chose by, and the files it writes: ``<name>.tuned.yaml`` (the
tables as a comment block on top), ``<name>.tuned.md`` and ``<name>.tuned.csv``."""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import platform
from pathlib import Path
from typing import Any

import yaml

from raytorch.tune_plan import Goal, Row

COLUMNS = [
    "#", "phase", "replicas", "threads", "num_cpus", "batch", "wait ms",
    "req/s", "p50 ms", "p99 ms", "errors", "mean batch", "meets goal", "note",
]  # fmt: skip


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table_cells(rows: list[Row], winner: Row | None) -> list[list[str]]:
    """The table's cells, one list per row, in ``COLUMNS`` order; the winner's number starred."""
    cells = []
    for index, row in enumerate(rows, 1):
        lay = row.layout
        cells.append([
            f"{index}*" if row is winner else str(index), row.phase, str(lay.replicas), lay.threads_label(),
            f"{lay.num_cpus:g}", str(lay.max_batch_size), f"{lay.batch_wait_s * 1000:g}",
            f"{row.throughput:.2f}", _num(row.p50_ms, 0), _num(row.p99_ms, 0), str(row.errors),
            _num(row.mean_batch, 2), "yes" if row.meets else "no", row.note,
        ])  # fmt: skip
    return cells


def markdown_table(rows: list[Row], winner: Row | None) -> str:
    """The rows as a markdown table (``*`` marks the winner)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for cells in table_cells(rows, winner):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def header(config_path: Path, goal: Goal, args: argparse.Namespace) -> list[str]:
    """The lines above the tables: the command, the machine, when, the goal, the machine's load
    (other work on the machine skews every number: judge the run by it)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if goal.target_rps is not None:
        flags = f"--target-rps {goal.target_rps:g}"
    else:
        flags = f"--latency-ms {goal.latency_ms:g} --concurrency {goal.concurrency}"
    flags += f" --seconds {args.seconds:g} --layouts {args.layouts}"
    return [
        f"Tuned by `raytorch tune {config_path.name} {flags}`",
        f"on {platform.node()} ({args.cores} cores), {when}.",
        f"Goal: {goal.describe()}; load average at the end {load}.",
    ]


def write_outputs(
    config_path: Path, config: dict[str, Any], tables: list[tuple[str, list[Row], Row, str]], lines: list[str]
) -> list[Path]:
    """``<name>.tuned.yaml`` (tables as a comment on top), ``.tuned.md`` and ``.tuned.csv``."""
    stem = config_path.with_suffix("")
    paths = [stem.with_name(f"{stem.name}.tuned.{ext}") for ext in ("yaml", "md", "csv")]
    md = list(lines)
    comment = [f"# {line}" for line in lines]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["app", *COLUMNS])
    for app, rows, winner, reason in tables:
        table = markdown_table(rows, winner)
        chosen = f"{app}: row {rows.index(winner) + 1} chosen: {reason}."
        md += ["", f"## {app}", "", table, "", chosen]
        comment += ["#", f"# {app} (* = chosen):", *(f"# {t}" for t in table.splitlines()), f"# {chosen}"]
        writer.writerows([app, *cells] for cells in table_cells(rows, winner))
    comment.append(
        f"# Comments of {config_path.name} are not carried over; its structure and other values are."
    )
    paths[0].write_text("\n".join(comment) + "\n" + yaml.safe_dump(config, sort_keys=False))
    paths[1].write_text("\n".join(md) + "\n")
    paths[2].write_text(out.getvalue())
    return paths
