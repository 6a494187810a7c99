"""Thousands of models on one small node: a model pool, with a dedicated deployment beside it.

Starts its own server (tests/e2e/serve_cluster.py: own ports and RAY_TMPDIR, stopped by PID) with
configs/model_pool.yaml's pool and two versions of a dedicated tiny model, then:

1. registers ``--models`` small distinct models (the tiny CNN, each with weights of its own) into
   the pool; the memory the server grew by, divided by their number, is ``idle_mb_per_model``
   (an idle pooled model is a file and a row of the state database, not a process). Memory is the private
   memory (USS) of every process of the server: PSS would move with other programs on the
   machine that map the same libraries (torch's), RSS counts shared pages once per process;
2. sends a mixed load for ``--duration-s``: ``--rate`` requests per second over the ``--hot`` hot
   models (Poisson arrivals; latency counted from each request's scheduled time) and a trickle
   of requests to models nobody asked for yet, each a cold load (``cold_p50_ms``);
3. halfway, switches the default version of a model called ``--switch-rate`` times per second
   (``switch_errors``: its failed requests);
4. measures the same for dedicated deployments: warm latency at the same rates, a default
   switch under load, register-to-first-prediction and the memory one more dedicated model adds.

Prints a table, then, last, the line
``many_models: registered=N hot=H warm_p50_ms=W cold_p50_ms=C idle_mb_per_model=M switch_errors=S errors=E``.
Exit status 1 when a target is missed (0 errors, cold p50 <= 1000 ms, warm p50 <= 50 ms,
idle <= 2 MB per model).

    PYTHONPATH=. python benchmarks/many_models.py --models 1000 --hot 50
"""

from __future__ import annotations

import argparse
import queue
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soak import Memory  # noqa: E402

from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run, trust_test_fixtures  # noqa: E402
from tests.fixtures.pooled import SMALL_IMAGES, TINY_SOURCE, small_jpeg, tiny_archive  # noqa: E402

TOKEN = "many-models-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = small_jpeg()
MIB = 1024 * 1024


class Results:
    """(status, seconds) per kind of request, safe to share between threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def call(
        self,
        kind: str,
        client: httpx.Client,
        method: str,
        path: str,
        since: float | None = None,
        **kwargs: object,
    ) -> httpx.Response | None:
        """Send a request and record its outcome; latency counts from ``since`` when given."""
        began = time.monotonic() if since is None else since
        try:
            response: httpx.Response | None = client.request(method, path, **kwargs)
            status = response.status_code  # type: ignore[union-attr]
        except httpx.HTTPError:
            response, status = None, 0
        with self.lock:
            self.by_kind[kind].append((status, time.monotonic() - began))
        return response

    def p50_ms(self, kind: str) -> float:
        seconds = [s for status, s in self.by_kind[kind] if status == 200]
        return statistics.median(seconds) * 1000 if seconds else float("nan")

    def errors(self, *kinds: str) -> int:
        return sum(1 for kind in kinds for status, _ in self.by_kind[kind] if status != 200)


def predict(
    results: Results, kind: str, client: httpx.Client, model: str, since: float | None = None
) -> httpx.Response | None:
    headers = {"content-type": "image/jpeg"}
    return results.call(kind, client, "POST", f"/predictions/{model}", since, content=IMAGE, headers=headers)


def build_config(budget_mb: float) -> dict:
    """configs/model_pool.yaml with the benchmark's budget, plus a dedicated model in two versions
    (one torch thread, as the pool's models have)."""
    config = load_config("model_pool.yaml")
    pool = next(a for a in config["applications"] if a["name"] == "pool-small")
    pool["args"]["memory_budget_mb"] = budget_mb
    for version in ("1.0", "2.0"):
        config["applications"].append(
            {
                "name": f"dedicated-{version}",
                "route_prefix": None,
                "import_path": "deployments.app:build_model",
                "args": {
                    "model": {"name": "dedicated", "version": version, "source": {"factory": TINY_SOURCE},
                              "preprocess": SMALL_IMAGES, "top_k": 3, "torch_threads": 1},
                    "resources": {"num_cpus": 0.25},
                },
            }
        )  # fmt: skip
    return trust_test_fixtures(config)


class OpenLoop:
    """Requests at ``rate`` per second (Poisson arrivals) to the models ``choose()`` names, sent
    by a pool of client threads, until :meth:`stop`. Latency counts from each request's scheduled
    time, so a server that falls behind shows it in the figures (no coordinated omission).
    ``on_answer(scheduled, response)`` sees every answer."""

    def __init__(
        self,
        results: Results,
        cluster: ServeCluster,
        kind: str,
        choose: Callable[[], str],
        rate: float,
        clients: int = 16,
        on_answer: Callable[[float, httpx.Response | None], None] | None = None,
    ) -> None:
        self.results, self.cluster, self.kind = results, cluster, kind
        self.choose, self.rate, self.on_answer = choose, rate, on_answer
        self._jobs: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._clients = [threading.Thread(target=self._client) for _ in range(clients)]
        self._scheduler = threading.Thread(target=self._schedule, args=(clients,))
        for thread in [*self._clients, self._scheduler]:
            thread.start()

    def _schedule(self, clients: int) -> None:
        arrivals = random.Random(self.kind)
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                due += arrivals.expovariate(self.rate)
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                self._jobs.put((due, self.choose()))
        except StopIteration:  # nothing left to ask for
            pass
        for _ in range(clients):
            self._jobs.put(None)

    def _client(self) -> None:
        with self.cluster.client(timeout=60) as client:
            while (job := self._jobs.get()) is not None:
                due, model = job
                response = predict(self.results, self.kind, client, model, since=due)
                if self.on_answer is not None:
                    self.on_answer(due, response)

    def stop(self) -> None:
        """Stop scheduling; requests already scheduled are still sent and recorded."""
        self._stop.set()
        for thread in [self._scheduler, *self._clients]:
            thread.join(timeout=120)


def switch_under_load(
    results: Results, cluster: ServeCluster, kind: str, model: str, duration_s: float, rate: float
) -> tuple[float, Counter[str]]:
    """Call ``model`` at ``rate``; halfway, make 2.0 its default. Returns the seconds the switch
    took and the versions that answered the requests scheduled after it returned."""
    after: Counter[str] = Counter()
    switched_at = [float("inf")]

    def on_answer(scheduled: float, response: httpx.Response | None) -> None:
        if scheduled > switched_at[0]:
            after[response.headers.get("x-model-version", "?") if response is not None else "none"] += 1

    load = OpenLoop(results, cluster, kind, lambda: model, rate, clients=8, on_answer=on_answer)
    time.sleep(duration_s / 2)
    began = time.monotonic()
    with cluster.client(timeout=120) as client:
        results.call(f"{kind}-call", client, "PUT", f"/models/{model}/2.0/set-default", headers=AUTH)
    switched_at[0] = time.monotonic()
    time.sleep(duration_s / 2)
    load.stop()
    return switched_at[0] - began, after


def metric_sum(cluster: ServeCluster, name: str) -> float:
    with cluster.client() as client:
        text = client.get("/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def settled_memory(cluster: ServeCluster, seconds: float = 5.0) -> Memory:
    """Memory after a pause, so garbage and in-flight work settle."""
    time.sleep(seconds)
    return Memory(cluster)


def run(args: argparse.Namespace, store: Path, state: Path) -> dict[str, float]:
    names = [f"m{i:04d}" for i in range(args.models)]
    hot, cold = names[: args.hot], names[args.hot :]
    random.Random(0).shuffle(cold)
    env = {"RAYTORCH_STATE_DIR": str(state), "RAYTORCH_MODEL_STORE": str(store), "RAYTORCH_TOKEN": TOKEN}
    results = Results()
    figures: dict[str, float] = {}
    with serve_run(build_config(args.budget_mb), extra_env=env) as cluster:

        def ready() -> bool:
            with cluster.client() as client:
                return (
                    client.get("/ping").status_code == 200 and client.get("/models", headers=AUTH).is_success
                )

        started = cluster.wait_for(ready, timeout=600, what="the server")
        print(f"server up in {started:.0f}s", flush=True)
        with cluster.client(timeout=300) as client:  # the pool's first model: imports, warm-up
            for url in ("warmup-1.0.zip", "switch-1.0.zip", "switch-2.0.zip"):
                results.call("setup", client, "POST", f"/models?url={url}", headers=AUTH)
            predict(results, "setup", client, "warmup")
            results.call("setup", client, "PUT", "/models/switch/1.0/set-default", headers=AUTH)
        before = settled_memory(cluster)

        began = time.monotonic()

        def register(name: str) -> None:
            with cluster.client(timeout=300) as client:
                results.call("register", client, "POST", f"/models?url={name}-1.0.zip", headers=AUTH)

        with ThreadPoolExecutor(args.register_concurrency) as pool:
            list(pool.map(register, names))
        figures["register_s"] = time.monotonic() - began
        after = settled_memory(cluster)
        figures["idle_mb_per_model"] = (after.uss - before.uss) / MIB / args.models
        figures["idle_rss_mb_per_model"] = (after.rss - before.rss) / MIB / args.models
        figures["idle_pss_mb_per_model"] = (after.pss - before.pss) / MIB / args.models
        print(f"registered {args.models} in {figures['register_s']:.0f}s", flush=True)

        with cluster.client(timeout=60) as client:  # first touch of the hot models: cold loads
            for name in hot:
                predict(results, "hot-first", client, name)
        chooser = random.Random(1)
        mixed = [
            OpenLoop(results, cluster, "warm", lambda: chooser.choice(hot), args.rate),
            OpenLoop(results, cluster, "cold", iter(cold).__next__, args.cold_per_s),
        ]
        figures["switch_s"], versions = switch_under_load(
            results, cluster, "switch", "switch", args.duration_s, args.switch_rate
        )
        for load in mixed:
            load.stop()
        figures["switch_after_ok"] = float(set(versions) == {"2.0"})
        figures["evictions"] = metric_sum(cluster, "raytorch_pool_evictions_total")
        figures["loads"] = metric_sum(cluster, "raytorch_pool_loads_total")
        figures["loaded_mb"] = (settled_memory(cluster, 2.0).uss - after.uss) / MIB

        # Dedicated deployments beside it: the same load on a model with replicas of its own.
        load = OpenLoop(results, cluster, "dedicated-warm", lambda: "dedicated/1.0", args.rate)
        figures["dedicated_switch_s"], _ = switch_under_load(
            results, cluster, "dedicated-switch", "dedicated", args.compare_s, args.switch_rate
        )
        load.stop()
        before_one = settled_memory(cluster)
        began = time.monotonic()
        with cluster.client(timeout=300) as client:
            query = "url=solo-1.0.zip&dedicated=true&num_cpus=0.25"
            results.call("dedicated-register", client, "POST", f"/models?{query}", headers=AUTH)
            answer = predict(results, "dedicated-first", client, "solo")
            while (answer is None or answer.status_code != 200) and time.monotonic() - began < 300:
                time.sleep(0.1)
                answer = predict(results, "dedicated-first", client, "solo")
        figures["dedicated_cold_ms"] = (time.monotonic() - began) * 1000
        after_one = settled_memory(cluster)
        figures["dedicated_mb_per_model"] = (after_one.uss - before_one.uss) / MIB
        figures["dedicated_pss_mb_per_model"] = (after_one.pss - before_one.pss) / MIB
    figures["warm_p50_ms"] = results.p50_ms("warm")
    figures["cold_p50_ms"] = results.p50_ms("cold")
    figures["dedicated_warm_p50_ms"] = results.p50_ms("dedicated-warm")
    figures["errors"] = results.errors("setup", "register", "hot-first", "warm", "cold", "switch-call")
    figures["switch_errors"] = results.errors("switch")
    figures["dedicated_errors"] = results.errors(
        "dedicated-warm", "dedicated-register", "dedicated-switch-call"
    )
    figures["dedicated_switch_errors"] = results.errors("dedicated-switch")
    report(results, figures)
    return figures


def report(results: Results, figures: dict[str, float]) -> None:
    print(f"\n{'kind':<22} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}  outcomes")
    for kind, samples in sorted(results.by_kind.items()):
        seconds = sorted(s for _, s in samples)
        p99 = seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1000
        outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(Counter(s for s, _ in samples).items()))
        print(
            f"{kind:<22} {len(samples):>8} {statistics.median(seconds) * 1000:>8.1f} {p99:>8.1f}  {outcomes}"
        )
    f = figures
    rows = [
        ("warm p50 ms", f"{f['warm_p50_ms']:.1f}", f"{f['dedicated_warm_p50_ms']:.1f}"),
        ("cold p50 ms", f"{f['cold_p50_ms']:.1f}", f"{f['dedicated_cold_ms']:.0f}"),
        ("idle MB per model (USS)", f"{f['idle_mb_per_model']:.3f}", f"{f['dedicated_mb_per_model']:.1f}"),
        (
            "idle MB per model (PSS)",
            f"{f['idle_pss_mb_per_model']:.3f}",
            f"{f['dedicated_pss_mb_per_model']:.1f}",
        ),
        ("switch errors", f"{f['switch_errors']:.0f}", f"{f['dedicated_switch_errors']:.0f}"),
        ("set-default took s", f"{f['switch_s']:.1f}", f"{f['dedicated_switch_s']:.1f}"),
    ]
    print(f"\n{'':<26} {'pool':>10} {'dedicated':>10}")
    for label, pooled, dedicated in rows:
        print(f"{label:<26} {pooled:>10} {dedicated:>10}")
    print(
        "(cold: a pooled model's first request; a dedicated model's register -> first answer)\n"
        f"pool: {f['loads']:.0f} cold loads, {f['evictions']:.0f} evictions, loaded models added "
        f"{f['loaded_mb']:.0f} MB; registering took {f['register_s']:.0f}s; idle RSS per model "
        f"{f['idle_rss_mb_per_model']:.3f} MB; after the switch every answer came from 2.0: "
        f"{bool(f['switch_after_ok'])}; dedicated errors {f['dedicated_errors']:.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="models registered into the pool")
    parser.add_argument("--hot", type=int, default=50, help="models the closed-loop clients call")
    parser.add_argument("--duration-s", type=float, default=60, help="mixed load, switch halfway")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second to the hot models")
    parser.add_argument(
        "--switch-rate", type=float, default=10.0, help="requests per second to the switched model"
    )
    parser.add_argument(
        "--cold-per-s", type=float, default=2.0, help="requests to never-used models per second"
    )
    parser.add_argument("--register-concurrency", type=int, default=4)
    parser.add_argument("--budget-mb", type=float, default=32.0, help="pool memory budget per replica")
    parser.add_argument("--compare-s", type=float, default=30, help="the same load on dedicated deployments")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="many-models-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        began = time.monotonic()
        for i in range(args.models):
            tiny_archive(store, f"m{i:04d}", "1.0", seed=i)
        extra = (("warmup", "1.0"), ("switch", "1.0"), ("switch", "2.0"), ("solo", "1.0"))
        for seed, (name, version) in enumerate(extra, start=args.models):
            tiny_archive(store, name, version, seed=seed)
        print(f"built {args.models} archives in {time.monotonic() - began:.0f}s", flush=True)
        figures = run(args, store, Path(tmp) / "state")
    line = (
        f"many_models: registered={args.models} hot={args.hot} warm_p50_ms={figures['warm_p50_ms']:.1f} "
        f"cold_p50_ms={figures['cold_p50_ms']:.1f} idle_mb_per_model={figures['idle_mb_per_model']:.3f} "
        f"switch_errors={figures['switch_errors']:.0f} errors={figures['errors']:.0f}"
    )
    ok = (
        figures["errors"] == 0
        and figures["switch_errors"] == 0
        and figures["cold_p50_ms"] <= 1000
        and figures["warm_p50_ms"] <= 50
        and figures["idle_mb_per_model"] <= 2
    )
    print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
