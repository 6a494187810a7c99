"""Big JSON bodies are parsed without holding the event loop (issue 24, finding 7): in a child
process, since json.loads holds Python's interpreter for its whole run; no Ray."""

from __future__ import annotations

import asyncio
import struct
import time

from deployments.inference.kserve_v1 import parse_instances
from deployments.inference.off_loop import PROCESS_BYTES, parse_off_loop
from deployments.inference.oip_codec import parse_request
from deployments.inference.parse_worker import worker
from handlers.errors import BadInputError

LOOP_LAG_S = 0.2  # the 100 ms for /ping, with room for a loaded CI machine


def numbers_body(count: int) -> bytes:
    data = ",".join(["0.5"] * count)
    tensor = f'{{"name": "x", "datatype": "FP32", "shape": [{count}], "data": [{data}]}}'
    return ('{"inputs": [' + tensor + "]}").encode()


async def max_lag_while(work: asyncio.Future) -> float:
    """The longest the loop was held while ``work`` ran (it ticks every 10 ms)."""
    lag = 0.0
    while not work.done():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        lag = max(lag, time.perf_counter() - started - 0.01)
    return lag


def test_a_big_json_body_never_holds_the_loop() -> None:
    count = 3_000_000  # 12 MB of numbers: json.loads on the loop or a thread holds it throughout
    body = numbers_body(count)

    async def scenario() -> tuple[object, float]:
        await worker().start()  # until it runs, big bodies go to a thread: nobody waits for it
        work = asyncio.ensure_future(parse_off_loop(len(body), parse_request, body, None))
        lag = await max_lag_while(work)
        await worker().close()
        return await work, lag

    request, lag = asyncio.run(scenario())
    (tensor,) = request.inputs
    assert tensor.shape == (count,) and tensor.data[:8] == struct.pack("<2f", 0.5, 0.5)
    assert lag < LOOP_LAG_S, f"the loop was held {lag:.2f}s"


def test_the_child_raises_the_parsers_own_errors_and_survives_them() -> None:
    padding = b" " * PROCESS_BYTES  # JSON allows it: big enough to go to the child

    async def scenario() -> list:
        await worker().start()
        bad = parse_off_loop(len(padding), parse_instances, b'{"instances": 7}' + padding)
        good = parse_off_loop(len(padding), parse_instances, b'{"instances": ["hi"]}' + padding)
        answers = await asyncio.gather(bad, good, return_exceptions=True)
        await worker().close()
        return answers

    bad, good = asyncio.run(scenario())
    assert (
        isinstance(bad, BadInputError) and bad.status == 400 and "'instances' must be a list" in bad.message
    )
    assert [item.data for item in good] == [b"hi"]


def test_a_dead_child_is_replaced_and_parses_go_on_meanwhile() -> None:
    padding = b" " * PROCESS_BYTES

    async def scenario() -> tuple[list[bytes], int, int]:
        child = worker()
        await child.start()
        first = await parse_off_loop(len(padding), parse_instances, b'{"instances": ["a"]}' + padding)
        dead = child._process
        dead.kill()  # as the OOM killer would
        await dead.wait()
        second = await parse_off_loop(len(padding), parse_instances, b'{"instances": ["b"]}' + padding)
        while not child.ready():  # the next big body started a new child
            await asyncio.sleep(0.05)
        third = await parse_off_loop(len(padding), parse_instances, b'{"instances": ["c"]}' + padding)
        new_pid = child._process.pid
        await child.close()
        return [first[0].data, second[0].data, third[0].data], dead.pid, new_pid

    answers, dead_pid, new_pid = asyncio.run(scenario())
    assert answers == [b"a", b"b", b"c"] and new_pid != dead_pid
