"""Classify a photo with the quickstart model through tritonclient, over HTTP and over gRPC.

    pip install "tritonclient[http,grpc]"
    make serve                                   # in another terminal
    python examples/tritonclient_quickstart.py kitten.jpg

The photo travels as the one element of a BYTES input (as binary data, tritonclient's
default); the answer is one BYTES element holding the handler's JSON: top-5 {label: probability}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def classify(module, url: str, model: str, image: bytes) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One inference with tritonclient's ``module`` (http or grpc: the same API)."""
    client = module.InferenceServerClient(url)
    if not client.is_model_ready(model):
        raise SystemExit(f"{model} is not ready at {url}")
    photo = module.InferInput("data", [1], "BYTES")
    photo.set_data_from_numpy(np.array([image], dtype=object))
    result = client.infer(model, [photo])
    return json.loads(result.as_numpy("output-0")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description="Classify a photo over HTTP and gRPC with tritonclient.")
    parser.add_argument("image", help="a JPEG or PNG photo")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--http", default="127.0.0.1:8000", help="host:port of the REST API")
    parser.add_argument("--grpc", default="127.0.0.1:7070", help="host:port of the gRPC API")
    args = parser.parse_args()
    image = Path(args.image).read_bytes()
    for name, module, url in (("HTTP", httpclient, args.http), ("gRPC", grpcclient, args.grpc)):
        print(f"{name} ({url}):")
        for label, probability in classify(module, url, args.model, image).items():
            print(f"  {probability:.3f}  {label}")


if __name__ == "__main__":
    main()
