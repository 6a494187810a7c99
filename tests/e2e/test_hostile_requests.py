"""Issue 24's table against the shared quickstart server: small hostile requests that once froze
the ingress or cost the replica seconds are each answered 4xx at once, ``/ping`` keeps
answering while they are in flight, and a real photo is answered right after.

The issue asks for a 4xx within a second and ``/ping`` within 100 ms. The asserts allow 5 s
and 1 s: they detect a hang (the table's requests took 10 to over 120 s, with ``/ping`` timing
out after 10 s), while the 2-core CI machine runs Ray, the model and the other tests' load.
The shared server's body limit is 1 MB (tests/e2e/conftest.py), so the two big cases are
scaled to fit under it: the work they once caused grew with their size, the refusal now does
not.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import BODY_LIMIT
from tests.e2e.serve_cluster import ServeCluster

MODEL = "efficientnet_lite0"
ANSWER_WITHIN_S = 5.0
PING_WITHIN_S = 1.0


def thin_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def bytes_request(image: bytes, **extra: object) -> dict:
    data = [base64.b64encode(image).decode()]
    return {"inputs": [{"name": "data", "shape": [1], "datatype": "BYTES", "data": data}], **extra}


def repeated_outputs() -> tuple[bytes, dict[str, str]]:
    request = bytes_request(thin_png(1, 1), outputs=[{"name": "output-0"}] * 30_000)
    return json.dumps(request).encode(), {"content-type": "application/json"}


def empty_bytes_elements() -> tuple[bytes, dict[str, str]]:
    tail = b"\0\0\0\0" * ((BODY_LIMIT - 1000) // 4)  # zero-length elements, as many as fit
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "data",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tail)},
                }
            ]
        }
    ).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + tail, headers


def numbers_json() -> tuple[bytes, dict[str, str]]:
    count = (BODY_LIMIT - 1000) // 4  # "0.5," per element: about 0.9 MB of JSON numbers
    data = ",".join(["0.5"] * count)
    tensor = f'{{"name": "data", "datatype": "FP32", "shape": [{count}], "data": [{data}]}}'
    return ('{"inputs": [' + tensor + "]}").encode(), {"content-type": "application/json"}


def huge_shape_integer() -> tuple[bytes, dict[str, str]]:
    body = (
        '{"inputs": [{"name": "data", "datatype": "BYTES", "shape": [' + "9" * 5000 + '], "data": ["aGk="]}]}'
    )
    return body.encode(), {"content-type": "application/json"}


CASES = {
    "outputs repeated 30,000 times": (
        "POST",
        f"/v2/models/{MODEL}/infer",
        repeated_outputs,
        400,
        "more than once",
    ),
    "BYTES input of empty elements": (
        "POST",
        f"/v2/models/{MODEL}/infer",
        empty_bytes_elements,
        400,
        "shape [1]",
    ),
    "8000x1 PNG": (
        "PUT",
        f"/predictions/{MODEL}",
        lambda: (thin_png(8000, 1), {"content-type": "image/png"}),
        400,
        "preprocess.max_pixels",
    ),
    "5000-digit shape": ("POST", f"/v2/models/{MODEL}/infer", huge_shape_integer, 400, "digits"),
    # Not in the table: the JSON parse that holds the interpreter (a child process's job).
    "0.9 MB of JSON numbers": ("POST", f"/v2/models/{MODEL}/infer", numbers_json, 400, "BYTES"),
}


def parser_processes(cluster: ServeCluster) -> list[int]:
    """PIDs of the ingress's JSON parser process (found by this cluster's RAY_TMPDIR)."""
    marker = f"RAY_TMPDIR={cluster.workdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and b"deployments.inference.parse_worker" in (entry / "cmdline").read_bytes()
                and marker in (entry / "environ").read_bytes().split(b"\0")
            ):
                found.append(int(entry.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


def idle(pid: int) -> bool:
    """True when ``pid`` used no CPU for a second (the parser process waits for work)."""

    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    before = cpu_ticks()
    time.sleep(1.0)
    return cpu_ticks() == before


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request_is_a_quick_4xx_while_ping_answers(
    quickstart: ServeCluster, cat_png: bytes, case: str
) -> None:
    method, path, build, status, fragment = CASES[case]
    body, headers = build()
    if case == "0.9 MB of JSON numbers":  # the first big JSON body starts the parser process
        with quickstart.client(timeout=60) as client:
            assert client.request(method, path, content=body, headers=headers).status_code == status
        quickstart.wait_for(lambda: bool(parser_processes(quickstart)), timeout=120, what="the parser")
        quickstart.wait_for(lambda: idle(parser_processes(quickstart)[0]), timeout=120, what="its imports")
    assert len(body) <= BODY_LIMIT, "the case must reach the parser, not the body limit"
    pings: list[float] = []
    done = threading.Event()

    def ping() -> None:
        with quickstart.client(timeout=30) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.get("/ping").status_code == 200
                pings.append(time.monotonic() - started)
                time.sleep(0.01)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    time.sleep(0.3)  # /ping is being polled before the hostile request goes out
    try:
        with quickstart.client(timeout=60) as client:
            started = time.monotonic()
            response = client.request(method, path, content=body, headers=headers)
            answered_s = time.monotonic() - started
        time.sleep(0.2)  # and a little after
    finally:
        done.set()
        pinger.join(timeout=30)
    # The figures the issue sets (4xx within 1 s, /ping within 100 ms), shown with pytest -s.
    slowest_ping_ms = max(pings or [0]) * 1000
    print(
        f"\n{case}: {response.status_code} in {answered_s * 1000:.0f} ms; /ping max {slowest_ping_ms:.0f} ms"
    )
    assert response.status_code == status, response.text[:500]
    message = response.json().get("error") or response.json().get("message")
    assert fragment in message and len(message) < 500, message
    assert answered_s < ANSWER_WITHIN_S, f"{case}: answered after {answered_s:.1f}s"
    assert pings and max(pings) < PING_WITHIN_S, f"{case}: /ping took {max(pings or [0]):.2f}s"
    with quickstart.client() as client:
        cat = client.put(f"/predictions/{MODEL}", content=cat_png)
    assert cat.status_code == 200 and next(iter(cat.json())) in {"tiger cat", "Egyptian cat", "tabby"}


def test_requested_outputs_still_select(quickstart: ServeCluster, cat_png: bytes) -> None:
    request = bytes_request(cat_png, outputs=[{"name": "output-0"}])
    with quickstart.client() as client:
        response = client.post(f"/v2/models/{MODEL}/infer", json=request)
    assert response.status_code == 200, response.text[:300]
    (output,) = response.json()["outputs"]
    assert output["name"] == "output-0" and "cat" in output["data"][0]
