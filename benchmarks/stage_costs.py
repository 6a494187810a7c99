"""CPU cost of each per-request stage that stays on the CPU when the model runs on a GPU.

    python benchmarks/stage_costs.py                 # the benchmark's 500x375 JPEG
    python benchmarks/stage_costs.py --image big.jpg

Measures, in this process with one thread, the CPU milliseconds per request of: JPEG decode,
resize + centre crop (bilinear and bicubic), the uint8 tensor, the batch normalisation (per
image, at batch 32) and the JSON answer. The HTTP and routing stages are measured on a live
server by `make bench` (the ingress column of its CPU table); docs/performance.md combines
both into what a 16-core GPU host can feed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from handlers.image_io import decode_image  # noqa: E402
from handlers.image_ops import center_crop, resize_shorter_side, to_uint8_tensor  # noqa: E402


def cpu_ms(work: Callable[[], object], repeat: int) -> float:
    """CPU milliseconds of one call (process time, so other load on the machine does not count)."""
    work()
    started = time.process_time()
    for _ in range(repeat):
        work()
    return (time.process_time() - started) / repeat * 1000


def default_image() -> bytes:
    import skimage

    photo = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
    out = io.BytesIO()
    photo.resize((500, 375), Image.Resampling.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", type=Path, help="a JPEG or PNG (default: 500x375 JPEG of a cat)")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = args.image.read_bytes() if args.image else default_image()
    image = decode_image(data, 10**9)
    resized = resize_shorter_side(image, 256, "bilinear")
    cropped = center_crop(resized, 224)
    items = [to_uint8_tensor(cropped) for _ in range(32)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    scale, bias = 1 / (255 * std), -mean / std  # as handlers/image_classifier.py normalises
    answer = {f"label {i}": 0.123456 for i in range(5)}
    stages = {
        f"JPEG decode ({image.width}x{image.height})": lambda: decode_image(data, 10**9),
        "resize 256 bilinear + crop 224": lambda: center_crop(
            resize_shorter_side(image, 256, "bilinear"), 224
        ),
        "resize 256 bicubic + crop 224": lambda: center_crop(resize_shorter_side(image, 256, "bicubic"), 224),
        "to uint8 tensor": lambda: to_uint8_tensor(cropped),
        "normalise (per image, batch of 32)": lambda: torch.stack(items).float().mul_(scale).add_(bias),
        "JSON answer (top 5)": lambda: json.dumps(answer).encode(),
    }
    print(f"| stage | CPU ms per request (1 thread, {args.repeat} runs) |")
    print("|---|---:|")
    total = 0.0
    for name, work in stages.items():
        ms = cpu_ms(work, args.repeat)
        if name.startswith("normalise"):
            ms /= 32
        if "bicubic" not in name:
            total += ms
        print(f"| {name} | {ms:.3f} |")
    print(f"| total (bilinear) | {total:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
