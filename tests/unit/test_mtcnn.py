"""MTCNN face detection: facenet-pytorch's weights in our own network code, same boxes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from handlers.loading import resolve_path
from handlers.mtcnn import MTCNN, mtcnn
from tests.fixtures.real_models import ASTRONAUT_FACE
from tests.fixtures.specs import photo_path

WEIGHTS = {name: f"pkg://facenet_pytorch/data/{name}.pt" for name in ("pnet", "rnet", "onet")}


@pytest.fixture(scope="module")
def model() -> MTCNN:
    return mtcnn(**WEIGHTS).eval()


def as_input(image: Image.Image) -> torch.Tensor:
    return F.to_dtype(F.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)


def two_faces() -> Image.Image:
    """The astronaut twice, at full size and at 70 %, on a plain background."""
    astronaut = Image.open(photo_path("astronaut.png")).convert("RGB")
    canvas = Image.new("RGB", (900, 560), (90, 120, 90))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut.resize((358, 358)), (530, 180))
    return canvas


def facenet_reference(model: MTCNN, image: Image.Image) -> np.ndarray:
    """facenet-pytorch's own cascade (its detect_face.py, read from the installed file) on our nets."""
    path = resolve_path("pkg://facenet_pytorch/models/utils/detect_face.py")
    spec = importlib.util.spec_from_file_location("facenet_detect_face", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def onet(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = model.onet.features(x)
        probabilities = torch.softmax(model.onet.dense6_1(features), dim=1)
        return model.onet.dense6_2(features), model.onet.dense6_3(features), probabilities

    boxes, _ = module.detect_face(
        [image], 20, model.pnet, model.rnet, onet, [0.6, 0.7, 0.7], 0.709, torch.device("cpu")
    )
    return np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)


@pytest.mark.parametrize("photo", ["astronaut", "two_faces", "motorcycle_left.png", "coffee.png"])
def test_same_boxes_and_scores_as_facenet_pytorch(model: MTCNN, photo: str) -> None:
    if photo == "two_faces":
        image = two_faces()
    else:
        image = Image.open(photo_path(f"{photo}.png" if "." not in photo else photo)).convert("RGB")
    with torch.inference_mode():
        (ours,) = model([as_input(image)])
        reference = facenet_reference(model, image)
    order = np.argsort(-reference[:, 4])
    assert ours["boxes"].numpy() == pytest.approx(reference[order, :4], abs=0.01)
    assert ours["scores"].numpy() == pytest.approx(reference[order, 4], abs=1e-4)
    assert ours["labels"].tolist() == [1] * len(reference)


def test_two_faces_of_different_sizes(model: MTCNN) -> None:
    with torch.inference_mode():
        (found,) = model([as_input(two_faces())])
    boxes = sorted(found["boxes"].tolist())
    assert len(boxes) == 2 and found["scores"].min() > 0.99
    assert boxes[0] == pytest.approx(ASTRONAUT_FACE, abs=3)
    # The smaller copy: its face at 70 % of the size, 530 px right and 180 px down.
    small = [530 + 0.7 * ASTRONAUT_FACE[0], 180 + 0.7 * ASTRONAUT_FACE[1]]
    assert boxes[1][:2] == pytest.approx(small, abs=6)


def test_faces_much_smaller_than_min_face_size_are_not_searched_for() -> None:
    large_only = mtcnn(**WEIGHTS, min_face_size=200).eval()
    with torch.inference_mode():
        (found,) = large_only([as_input(two_faces())])
    # The 90 px face is still found (P-Net tolerates about half the size), the 60 px one not.
    assert len(found["boxes"]) == 1
    assert found["boxes"][0].tolist() == pytest.approx(ASTRONAUT_FACE, abs=6)


def test_images_too_small_for_any_face_give_empty_results(model: MTCNN) -> None:
    with torch.inference_mode():
        (found,) = model([torch.zeros(3, 10, 10)])
    assert found["boxes"].shape == (0, 4) and found["scores"].shape == (0,)
