"""Soak: a bounded mixed load against a real `serve run`, checking errors and memory growth.

Starts its own server (tests/e2e/serve_cluster.py: own ports, own RAY_TMPDIR, stopped by PID),
then for ``--duration-s`` seconds sends predictions (TorchServe, KServe v1 and v2 routes) to a
configured model and to a registered one, while another thread registers, uses and
unregisters a third model over and over. Prints a table of outcomes per kind and the resident
memory of the whole stack after warm-up and at the end.

Exit status 1 when any request got an unexpected answer or the memory grew by 5 % or more.

    PYTHONPATH=. python benchmarks/soak.py --duration-s 600
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.archive import write_archive  # noqa: E402
from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run, trust_test_fixtures  # noqa: E402
from tests.fixtures.specs import photo_path  # noqa: E402

TOKEN = "soak-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY = {"factory": "tests.fixtures.models:tiny_classifier"}
SMALL = {"resize": 64, "crop": 56}
MAX_GROWTH = 0.05
PAUSE = threading.Event()  # set while memory is measured: the churner waits
# What each kind of request may answer. The churned model comes and goes, so 404 and 503 are
# expected for it; everything else must succeed.
EXPECTED = {
    "predict": {200},
    "v1": {200},
    "v2": {200},
    "registered": {200},
    "churn-predict": {200, 404, 503},
    "register": {200},
    "unregister": {200},
}


class Recorder:
    """Outcomes and latencies per kind of request, safe to share between threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def record(self, kind: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.statuses[kind][outcome] += 1
            self.seconds[kind].append(seconds)

    def call(self, kind: str, client: httpx.Client, method: str, path: str, **kwargs: object) -> int | None:
        began = time.monotonic()
        try:
            status: int | None = client.request(method, path, **kwargs).status_code
            outcome = str(status)
        except httpx.HTTPError as exc:
            status, outcome = None, type(exc).__name__
        self.record(kind, outcome, time.monotonic() - began)
        return status

    def unexpected(self) -> dict[str, dict[str, int]]:
        return {
            kind: {o: n for o, n in counts.items() if not (o.isdigit() and int(o) in EXPECTED[kind])}
            for kind, counts in self.statuses.items()
            if any(not (o.isdigit() and int(o) in EXPECTED[kind]) for o in counts)
        }


class Memory:
    """Resident (RSS) and proportional (PSS) memory of every process of one cluster."""

    def __init__(self, cluster: ServeCluster) -> None:
        marker = f"RAY_TMPDIR={cluster.workdir}".encode()
        # pid -> (title, rss, pss); keyed by pid because Ray retitles busy workers per task
        self.by_pid: dict[int, tuple[str, int, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                title = " ".join(Path(a).name for a in args[:2])[:60]
                rollup = (entry / "smaps_rollup").read_text().splitlines()[1:]
            except OSError:  # exited meanwhile
                continue
            fields = dict(line.split(":", 1) for line in rollup if ":" in line)
            kib = (int(fields[k].split()[0]) * 1024 for k in ("Rss", "Pss"))
            self.by_pid[int(entry.name)] = (title, *kib)

    @property
    def rss(self) -> int:
        return sum(v[1] for v in self.by_pid.values())

    @property
    def pss(self) -> int:
        return sum(v[2] for v in self.by_pid.values())


def build_config(store: Path) -> dict:
    """Ingress + management from the quickstart config, plus one tiny model."""
    import torch

    from tests.fixtures.models import tiny_classifier

    torch.save(tiny_classifier().state_dict(), store / "tiny.pth")
    spec = {"source": {**TINY, "state_dict": "tiny.pth"}, "preprocess": SMALL, "top_k": 3}
    for name in ("registered", "churn"):
        write_archive({"name": name, **spec}, [store / "tiny.pth"], store / f"{name}.zip")
    config = trust_test_fixtures(load_config("quickstart.yaml"))
    tiny = {
        "name": "tiny",
        "route_prefix": None,
        "import_path": "deployments.app:build_model",
        "args": {
            "model": {"name": "tiny", "source": TINY, "preprocess": SMALL, "top_k": 3},
            "resources": {"num_cpus": 0.25},
        },
    }
    config["applications"] = [*config["applications"][:2], tiny]
    return config


def predictor(cluster: ServeCluster, rec: Recorder, image: bytes, stop: threading.Event, worker: int) -> None:
    encoded = base64.b64encode(image).decode()
    v2 = {"inputs": [{"name": "data", "shape": [1], "datatype": "BYTES", "data": [encoded]}]}
    with cluster.client(timeout=30) as client:
        for i in range(10**9):  # bounded by the stop event; the range only bounds a runaway
            if stop.is_set():
                return
            step = (i + worker) % 5
            if step == 0:
                rec.call(
                    "v1", client, "POST", "/v1/models/tiny:predict", json={"instances": [{"b64": encoded}]}
                )
            elif step == 1:
                rec.call("v2", client, "POST", "/v2/models/tiny/infer", json=v2)
            elif step == 2:
                rec.call("registered", client, "POST", "/predictions/registered", content=image)
            elif step == 3:
                rec.call("churn-predict", client, "POST", "/predictions/churn", content=image)
            else:
                rec.call("predict", client, "PUT", "/predictions/tiny", content=image)


def churner(cluster: ServeCluster, rec: Recorder, stop: threading.Event, quiet: threading.Event) -> None:
    """Register, use and unregister a model in a loop; ``quiet`` is set while it is unregistered."""
    with cluster.client(timeout=180) as client:
        while not stop.is_set():
            while PAUSE.is_set() and not stop.is_set():
                time.sleep(0.2)
            quiet.clear()
            if (
                rec.call("register", client, "POST", "/models?url=churn.zip&num_cpus=0.1", headers=AUTH)
                == 200
            ):
                time.sleep(2)
                rec.call("unregister", client, "DELETE", "/models/churn", headers=AUTH)
            quiet.set()
            time.sleep(1)


def measure_quiet(cluster: ServeCluster, quiet: threading.Event) -> Memory:
    """Memory while the churned model is unregistered and its replica gone, so both samples
    see the same processes."""
    PAUSE.set()
    try:
        quiet.wait(timeout=120)
        for _ in range(120):
            memory = Memory(cluster)
            if not any("churn" in t or "graceful_shutdown" in t for t, _, _ in memory.by_pid.values()):
                break
            time.sleep(0.5)
        return memory
    finally:
        PAUSE.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=600, help="measured load after warm-up")
    parser.add_argument("--warmup-s", type=float, default=60)
    parser.add_argument("--workers", type=int, default=4, help="prediction threads")
    args = parser.parse_args()
    image = photo_path("chelsea.png").read_bytes()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        env = {
            "RAYTORCH_STATE_DIR": f"{tmp}/state",
            "RAYTORCH_MODEL_STORE": str(store),
            "RAYTORCH_TOKEN": TOKEN,
        }
        env["PYTHONPATH"] = str(ROOT)
        with serve_run(build_config(store), extra_env=env) as cluster:
            cluster.wait_for(lambda: _ready(cluster, image), timeout=300, what="the server")
            rec, stop, quiet = Recorder(), threading.Event(), threading.Event()
            threads = [threading.Thread(target=churner, args=(cluster, rec, stop, quiet))] + [
                threading.Thread(target=predictor, args=(cluster, rec, image, stop, w))
                for w in range(args.workers)
            ]
            for thread in threads:
                thread.start()
            time.sleep(args.warmup_s)
            start = measure_quiet(cluster, quiet)
            began = time.monotonic()
            time.sleep(args.duration_s)
            end = measure_quiet(cluster, quiet)
            elapsed = time.monotonic() - began
            stop.set()
            for thread in threads:
                thread.join(timeout=240)
    return report(rec, start, end, elapsed)


def _ready(cluster: ServeCluster, image: bytes) -> bool:
    with cluster.client() as client:
        if client.put("/predictions/tiny", content=image).status_code != 200:
            return False
        if client.get("/models/registered", headers=AUTH).status_code != 200:
            return (
                client.post("/models?url=registered.zip&num_cpus=0.1", headers=AUTH, timeout=180).status_code
                == 200
            )
        return True


def report(rec: Recorder, start: Memory, end: Memory, elapsed: float) -> int:
    print(f"\n{'kind':<14} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}  outcomes")
    for kind in sorted(rec.statuses):
        seconds = sorted(rec.seconds[kind])
        p50 = statistics.median(seconds) * 1000
        p99 = seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1000
        outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(rec.statuses[kind].items()))
        print(f"{kind:<14} {len(seconds):>8} {p50:>8.0f} {p99:>8.0f}  {outcomes}")
    growth = (end.rss - start.rss) / start.rss
    mib = 1024 * 1024
    print(f"\nmeasured for {elapsed:.0f}s after warm-up; processes {len(start.by_pid)} -> {len(end.by_pid)}")
    for label, first, last in (("RSS", start.rss, end.rss), ("PSS", start.pss, end.pss)):
        change = (last - first) / first
        print(f"{label}  start {first / mib:8.0f} MiB  end {last / mib:8.0f} MiB  growth {change:+.2%}")
    print("largest PSS changes by process:")
    pids = set(start.by_pid) | set(end.by_pid)
    delta = {p: end.by_pid.get(p, ("", 0, 0))[2] - start.by_pid.get(p, ("", 0, 0))[2] for p in pids}
    for pid in sorted(delta, key=lambda p: -abs(delta[p]))[:6]:
        title = (end.by_pid.get(pid) or start.by_pid[pid])[0]
        print(f"  {delta[pid] / mib:+7.1f} MiB  pid {pid} {title}")
    unexpected = rec.unexpected()
    if unexpected:
        print(f"UNEXPECTED answers: {unexpected}")
    if growth >= MAX_GROWTH:
        print(f"RSS grew by {growth:.2%}, not under {MAX_GROWTH:.0%}")
    ok = not unexpected and growth < MAX_GROWTH
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
