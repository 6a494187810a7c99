"""Ask TorchServe 0.12 the questions tests/e2e/test_workflows.py asks raytorch, on the same
``.war`` and ``.mar`` archives, and print its answers (docs/workflows.md compares them).

Needs Java 11+ and TorchServe's package (``pip install 'raytorch[bench]'``, or
``--torchserve-path DIR`` for a copy installed with ``pip install --target DIR torchserve psutil``
so that it does not change which ``ts`` the TorchServe handler files of raytorch get). Started on
ports of its own in its own process group, stopped by it.

    python benchmarks/torchserve_workflows.py [--torchserve-path DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.e2e import test_workflows as wf
from tests.e2e.serve_cluster import free_port, stop
from tests.fixtures import torchserve_archives as archives

START = "import sys; from ts.model_server import start; sys.argv = ['torchserve', *sys.argv[1:]]; start()"


def build(root: Path) -> tuple[Path, Path]:
    """The e2e test's model archives and workflow archives."""
    store, workflow_store, work = root / "store", root / "wstore", root / "work"
    for folder in (store, workflow_store, work):
        folder.mkdir(parents=True, exist_ok=True)
    for name, (key, expression) in wf.MODELS.items():
        source = wf.TRANSLATOR % {"key": key, "expression": expression}
        archives.build_handler_only(store, work / name, name, "1.0", source, "translator.py")
    wf.build_war(
        workflow_store, work / "retranslate", "retranslate", wf.RETRANSLATION_SPEC, wf.RETRANSLATION_HANDLER
    )
    wf.build_war(workflow_store, work / "dual", "dual", wf.DUAL_SPEC, wf.DUAL_HANDLER)
    archives.build_handler_only(store, work / "joiner", "joiner", "1.0", wf.JOINER, "joiner.py")
    wf.build_war(workflow_store, work / "breed", "breed", wf.BREED_SPEC, wf.BREED_HANDLER)
    return store, workflow_store


def ask(inference: str, management: str) -> None:
    """The e2e test's requests, in its order, each answer printed."""
    steps = [
        ("register retranslate", "POST", f"{management}/workflows?url=retranslate.war", None),
        ("register dual", "POST", f"{management}/workflows?url=dual.war", None),
        ("list", "GET", f"{management}/workflows", None),
        ("describe", "GET", f"{management}/workflows/retranslate", None),
        ("models", "GET", f"{management}/models", None),
        ("sequential", "POST", f"{inference}/wfpredict/retranslate", b"Hello World"),
        ("parallel", "POST", f"{inference}/wfpredict/dual", b"Good morning"),
        ("a model node fails (its handler's 400)", "POST", f"{inference}/wfpredict/retranslate", b"   "),
        ("a function node fails", "POST", f"{inference}/wfpredict/dual", b"fail"),
        ("unknown workflow", "POST", f"{inference}/wfpredict/nowhere", b"x"),
        ("register breed", "POST", f"{management}/workflows?url=breed.war", None),
        ("a model node with two parents", "POST", f"{inference}/wfpredict/breed", b" Hallo "),
        ("re-register", "POST", f"{management}/workflows?url=dual.war", None),
        ("absent archive", "POST", f"{management}/workflows?url=absent.war", None),
        ("unregister", "DELETE", f"{management}/workflows/dual", None),
        ("describe after unregister", "GET", f"{management}/workflows/dual", None),
    ]
    with httpx.Client(timeout=300) as client:
        for label, method, url, body in steps:
            started = time.perf_counter()
            reply = client.request(method, url, content=body)
            seconds = time.perf_counter() - started
            print(f"## {label}: {reply.status_code} {reply.headers.get('content-type')} ({seconds:.1f}s)")
            print(reply.text.strip(), end="\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torchserve-path", help="a folder holding TorchServe's package (pip --target)")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ts-workflows-"))
    store, workflow_store = build(root)
    ports = [free_port() for _ in range(3)]
    (root / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{ports[0]}\nmanagement_address=http://127.0.0.1:{ports[1]}\n"
        f"metrics_address=http://127.0.0.1:{ports[2]}\ndisable_token_authorization=true\n"
        "enable_model_api=true\ninstall_py_dep_per_model=false\n"
    )
    env = {**os.environ, "LOG_LOCATION": str(root / "logs"), "METRICS_LOCATION": str(root / "logs")}
    if options.torchserve_path:
        env["PYTHONPATH"] = options.torchserve_path
    command = [sys.executable, "-c", START, "--start", "--ncs", "--foreground", "--model-store", str(store)]
    command += ["--workflow-store", str(workflow_store), "--ts-config", str(root / "config.properties")]
    with open(root / "torchserve.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        inference = f"http://127.0.0.1:{ports[0]}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{inference}/ping").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        ask(inference, f"http://127.0.0.1:{ports[1]}")
        print(f"(TorchServe's logs: {root / 'logs'})")
    finally:
        stop(process)  # its process group: the Java frontend and its Python workers


if __name__ == "__main__":
    main()
