"""Time to the first part of a streamed answer against the time to the whole answer.

Against a running server (``serve run configs/audio_classifier.yaml``), for one input file:

    python benchmarks/stream_first_chunk.py --model speech --repeat 5 --copies 6 speech.wav

Each round sends the input unstreamed (time to the whole answer) and streamed as Server-Sent
Events (time to the first part, time to the last).
``--copies`` repeats a WAV recording that many times in a row (a longer recording, more
segments). Prints the median of each; numbers from a loaded machine mean little.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import wave
from pathlib import Path

import httpx


def repeated_wav(data: bytes, copies: int) -> bytes:
    """A WAV recording played ``copies`` times in a row."""
    with wave.open(io.BytesIO(data)) as clip:
        params, frames = clip.getparams(), clip.readframes(clip.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as joined:
        joined.setparams(params)
        joined.writeframes(frames * copies)
    return out.getvalue()


def one_round(client: httpx.Client, path: str, body: bytes) -> tuple[float, float, float, int]:
    """(whole answer s, first part s, last part s, parts) for one input."""
    started = time.perf_counter()
    whole = client.post(path, content=body)
    whole.raise_for_status()
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    first_s, parts = 0.0, 0
    with client.stream("POST", path, content=body, headers={"accept": "text/event-stream"}) as streamed:
        streamed.raise_for_status()
        for line in streamed.iter_lines():
            if line.startswith("data: "):
                parts += 1
                if parts == 1:
                    first_s = time.perf_counter() - started
    return whole_s, first_s, time.perf_counter() - started, parts


def main() -> None:
    parser = argparse.ArgumentParser(description="Time to the first streamed part vs the whole answer.")
    parser.add_argument("input", type=Path, help="the request body (a WAV file for the speech model)")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="speech")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--copies", type=int, default=1, help="repeat a WAV recording this many times")
    args = parser.parse_args()
    body = args.input.read_bytes()
    if args.copies > 1:
        body = repeated_wav(body, args.copies)
    rounds = []
    with httpx.Client(base_url=args.url, timeout=300) as client:
        one_round(client, f"/predictions/{args.model}", body)  # warm-up
        for _ in range(args.repeat):
            rounds.append(one_round(client, f"/predictions/{args.model}", body))
    whole, first, last, parts = (statistics.median(column) for column in zip(*rounds, strict=True))
    print(f"{args.model}: {len(body)} bytes, {parts:.0f} parts, median of {args.repeat}")
    print(f"  whole answer, unstreamed : {whole * 1000:8.1f} ms")
    print(f"  first part, streamed     : {first * 1000:8.1f} ms")
    print(f"  last part, streamed      : {last * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
