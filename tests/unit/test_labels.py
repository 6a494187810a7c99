"""ImageNet labels without importing torchvision (handlers.labels)."""

from __future__ import annotations

import subprocess
import sys


def test_imagenet_labels_read_from_source_are_torchvisions_own() -> None:
    """Fails when torchvision moves or changes its category list (the reader then falls back
    to the import, and this test says the fast path is gone)."""
    from torchvision.models import ResNet50_Weights

    from handlers.labels import _categories_from_source, imagenet_categories

    expected = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert _categories_from_source() == expected
    assert imagenet_categories() == expected


def test_reading_imagenet_labels_does_not_import_torchvision() -> None:
    code = (
        "import sys; from handlers.labels import imagenet_categories; "
        "labels = imagenet_categories(); print(len(labels), labels[281], 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1000", "tabby", "False"]
