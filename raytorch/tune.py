"""``raytorch tune CONFIG``: measure a few layouts of the config's model application(s) on the
real server on this machine, under the load you name, and write the winning config.

    raytorch tune configs/quickstart.yaml --target-rps 20            # reach 20 req/s, lowest p99
    raytorch tune configs/densenet.yaml --latency-ms 800 --concurrency 8 --seconds 15 --layouts 10

One server is started the way `make serve` starts it (its own ports, RAY_TMPDIR, state and
token), then each layout is deployed into it as ``serve deploy`` would (only the model
application changes; batching and replica count change without a restart) and measured: ``--seconds``
after a warm-up, open loop at ``--target-rps``, or closed loop at ``--concurrency``. Phase one
tries replicas x torch threads (fixed one share of the cores, the default chooser, fixed 1),
phase two batch size and batch wait around the best of them; ``--layouts`` bounds the total.
Writes ``<name>.tuned.yaml`` beside CONFIG (only the tuned fields changed, the table as a
comment on top), ``<name>.tuned.md`` and ``<name>.tuned.csv``, and checks the written YAML
serves.
"""

from __future__ import annotations

import argparse
import io
import mimetypes
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raytorch.loadgen import LoadResult, closed_loop, open_loop
from raytorch.local_server import InputRefused, LocalServer, ServerError
from raytorch.tune_plan import (
    Goal,
    Layout,
    Row,
    app_args,
    apply_layout,
    batching_layouts,
    choose,
    current_layout,
    measured_config,
    model_apps,
    reserved_cpus,
    restarts_replicas,
    split_budget,
    thread_layouts,
)
from raytorch.tune_report import header, markdown_table, write_outputs

IMAGE_HANDLERS = {"image_classifier", "object_detector", "image_segmenter"}
START_TIMEOUT_S = 300.0
# A layout that cannot start its replicas within this is reported as not deployed.
REDEPLOY_TIMEOUT_S = 180.0


class TuneError(Exception):
    """A problem with the command's input, said in a sentence."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of ``raytorch tune``."""
    p = argparse.ArgumentParser(
        prog="raytorch tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="a Serve config, e.g. configs/quickstart.yaml")
    p.add_argument("--target-rps", type=float, help="throughput to reach (requests/s, sent open loop)")
    p.add_argument("--latency-ms", type=float, help="p99 bound (ms) at --concurrency closed-loop clients")
    p.add_argument("--concurrency", type=int, help="clients for --latency-ms")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds measured per layout (default 10)")
    p.add_argument(
        "--warmup", type=float, help="seconds of load before each measurement (default: min(3, seconds))"
    )
    p.add_argument("--layouts", type=int, default=8, help="most layouts measured per model (default 8)")
    p.add_argument("--model", action="append", help="model application to tune (default: every one)")
    p.add_argument("--input", type=Path, help="the request body to send (default: a photo, for image models)")
    p.add_argument("--content-type", help="of --input (default: guessed from its name)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to size the layouts to")
    p.add_argument(
        "--restart-each", action="store_true", help="start a fresh server per layout instead of redeploying"
    )
    return p.parse_args(argv)


def sample_photo() -> bytes:
    """A 500x375 JPEG (the size of TorchServe's kitten.jpg) of scikit-image's cat photo;
    TuneError when scikit-image is not installed."""
    try:
        import skimage
        from PIL import Image
    except ImportError:
        raise TuneError(
            "no built-in sample photo (scikit-image is not installed): give --input FILE"
        ) from None
    photo = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
    out = io.BytesIO()
    photo.resize((500, 375), Image.Resampling.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def default_input(handler: str) -> tuple[bytes, str]:
    """The sample photo, for image models; other models need ``--input``."""
    if handler not in IMAGE_HANDLERS:
        raise TuneError(f"models with handler {handler!r} need --input FILE (a request body they accept)")
    return sample_photo(), "image/jpeg"


def read_input(path: Path, content_type: str | None) -> tuple[bytes, str]:
    if not path.is_file():
        raise TuneError(f"--input {path}: no such file")
    guessed = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.read_bytes(), guessed


def load(
    server: LocalServer, url: str, body: bytes, content_type: str, goal: Goal, args: argparse.Namespace
) -> LoadResult:
    """One measurement of the layout the server runs now."""
    warmup = args.warmup if args.warmup is not None else min(3.0, args.seconds)
    if goal.target_rps is not None:
        # Unanswered requests beyond two seconds' worth are dropped (and count as errors).
        cap = max(16, int(2 * goal.target_rps))
        return open_loop(url, body, goal.target_rps, warmup, args.seconds, cap, content_type)
    return closed_loop(url, body, goal.concurrency, warmup, args.seconds, content_type=content_type)  # type: ignore[arg-type]


def to_row(layout: Layout, phase: str, result: LoadResult) -> Row:
    return Row(
        layout,
        phase,
        result.throughput,
        result.percentile(50),
        result.percentile(99),
        result.errors,
        result.mean_batch(),
        note=", ".join(f"{kind} x{n}" for kind, n in result.error_kinds.items()),
    )


class Session:
    """The server the layouts run on: one, redeployed per layout, or (``restart_each``) a new
    one per layout."""

    def __init__(self, restart_each: bool):
        self.restart_each = restart_each
        self.server: LocalServer | None = None
        self.current: dict[str, Any] | None = None  # the config the server runs

    def run(self, config: dict[str, Any], app: str, probe: tuple[str, bytes, str]) -> LocalServer:
        """``config`` served and ``app`` answering ``probe`` (path, body, content type)."""
        if self.server is not None and self.restart_each:
            self.stop()
        if self.server is None:
            self.server = server = LocalServer(config)
            seconds = server.wait_for(lambda: server.answers(*probe), START_TIMEOUT_S, "the first prediction")
            print(f"  server ready in {seconds:.1f} s (log: {server.log_path})", flush=True)
        elif config != self.current:
            server = self.server
            started = time.monotonic()
            if restarts_replicas(self.current or {}, config, app):
                # New replicas would wait for the old ones' CPUs: Serve keeps an old replica
                # until its replacement runs, and on a small machine both do not fit.
                server.remove(self.current or config, app, REDEPLOY_TIMEOUT_S)
            server.apply(config, app, REDEPLOY_TIMEOUT_S)
            server.wait_for(lambda: server.answers(*probe), REDEPLOY_TIMEOUT_S, "a prediction")
            print(f"  redeployed in {time.monotonic() - started:.1f} s", flush=True)
        self.current = config
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = self.current = None


def measure_layouts(
    session: Session, config: dict[str, Any], app: str, layouts: list[Layout], phase: str,
    body: tuple[bytes, str], goal: Goal, args: argparse.Namespace,
) -> list[Row]:  # fmt: skip
    """Deploy and measure each layout in turn; a layout that cannot deploy is a row with a note."""
    spec = app_args(config, app).model
    path = f"/predictions/{spec.name}"
    rows = []
    for layout in layouts:
        label = (
            f"{layout.replicas} x threads {layout.threads_label()}, batch {layout.max_batch_size}, "
            f"wait {layout.batch_wait_s * 1000:g} ms"
        )
        print(f"[{app}] {phase}: {label}", flush=True)
        try:
            server = session.run(measured_config(config, app, layout), app, (path, *body))
        except InputRefused as exc:
            raise TuneError(f"{app} refuses the input: {exc} (give --input FILE, --content-type)") from None
        except ServerError as exc:
            print(f"  not measured: {exc}", file=sys.stderr, flush=True)
            rows.append(Row(layout, phase, note=f"did not deploy: {str(exc).splitlines()[0][:120]}"))
            session.stop()  # a failed deploy may leave the server half-changed: start afresh
            continue
        row = to_row(layout, phase, load(server, server.base_url + path, *body, goal, args))
        print(
            f"  {row.throughput:.2f} req/s, p50 {row.p50_ms:.0f} ms, p99 {row.p99_ms:.0f} ms, "
            f"errors {row.errors}",
            flush=True,
        )
        rows.append(row)
    return rows


def request_body(config: dict[str, Any], app: str, args: argparse.Namespace) -> tuple[bytes, str]:
    """What the load sends to ``app``: --input, or the built-in photo for image models."""
    if args.input:
        return read_input(args.input, args.content_type)
    return default_input(app_args(config, app).model.handler)


def tune_app(
    session: Session, config: dict[str, Any], app: str, body: tuple[bytes, str], goal: Goal,
    args: argparse.Namespace,
) -> tuple[list[Row], Row, str]:  # fmt: skip
    """Measure ``app``'s layouts (phase one, then batching around its best); rows, winner, why."""
    model = app_args(config, app)
    base = current_layout(model)
    free = args.cores - reserved_cpus(config, app)
    first, second = split_budget(args.layouts)
    plan = thread_layouts(base, args.cores, free)
    rows = measure_layouts(session, config, app, plan[:1], "config", body, goal, args)
    rows += measure_layouts(session, config, app, plan[1:first], "layout", body, goal, args)
    if not any(r.measured for r in rows):
        raise TuneError(f"no layout of {app} answered: see the notes above")
    best, _ = choose(rows, goal)
    second += max(0, first - len(plan))  # phase one's unused budget goes to batching
    batching = batching_layouts(best.layout)[:second]
    rows += measure_layouts(session, config, app, batching, "batching", body, goal, args)
    winner, reason = choose(rows, goal)
    return rows, winner, reason


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``raytorch tune``; 0 when a tuned config was written and serves."""
    args = parse_args(argv)
    try:
        goal = Goal(args.target_rps, args.latency_ms, args.concurrency)
        split_budget(args.layouts)
        if args.seconds <= 0:
            raise ValueError(f"--seconds must be above 0, not {args.seconds:g}")
    except ValueError as exc:
        print(f"raytorch tune: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args, goal)
    except (TuneError, ServerError) as exc:
        print(f"raytorch tune: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, goal: Goal) -> int:
    if not args.config.is_file():
        raise TuneError(f"{args.config}: no such file")
    try:
        config = yaml.safe_load(args.config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TuneError(f"{args.config} is not YAML: {exc}") from None
    apps = args.model or model_apps(config)
    unknown = sorted(set(apps) - set(model_apps(config)))
    if not apps or unknown:
        raise TuneError(
            f"no model application {', '.join(unknown)} in {args.config} "
            f"(it has: {', '.join(model_apps(config)) or 'none'})"
        )
    for app in apps:
        try:
            app_args(config, app)
        except ValidationError as exc:
            raise TuneError(f"{args.config}: application {app}: {exc}") from None
    bodies = {app: request_body(config, app, args) for app in apps}  # input errors before any server
    session = Session(args.restart_each)
    tables = []
    try:
        for app in apps:
            rows, winner, reason = tune_app(session, config, app, bodies[app], goal, args)
            config = apply_layout(config, app, winner.layout)  # the next app is tuned next to it
            tables.append((app, rows, winner, reason))
        lines = header(args.config, goal, args)
        paths = write_outputs(args.config, config, tables, lines)
        print("\n".join(["", *lines]))
        for app, rows, winner, reason in tables:
            print(f"\n{app}:\n{markdown_table(rows, winner)}\nchosen: row {rows.index(winner) + 1}: {reason}")
        verify(session, paths[0], bodies)
    finally:
        session.stop()
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def verify(session: Session, path: Path, bodies: dict[str, tuple[bytes, str]]) -> None:
    """Load the written YAML with our settings models and serve it: each tuned app answers."""
    written = yaml.safe_load(path.read_text())
    for app in bodies:
        app_args(written, app)  # raises if the written args do not validate
    session.restart_each = False
    for app, body in bodies.items():
        session.run(written, app, (f"/predictions/{app_args(written, app).model.name}", *body))
    print(f"checked: {path.name} loads and its model(s) answer on this machine", flush=True)


if __name__ == "__main__":
    sys.exit(main())
