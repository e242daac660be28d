"""A YOLO-format dataset made on the spot, for measuring speed when no data is given.

The images are JPEGs whose decode and augmentation cost what photos cost: smooth colour fields
with sensor-like noise (so they compress to photo-like sizes, 100-200 KB at 640x480) and a few
filled shapes, each of which is a labelled box. It says nothing about accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["rectangle", "ellipse", "triangle"]
MANIFEST = "yoloprof-dataset.json"
VERSION = 1


@dataclass(frozen=True)
class SyntheticSpec:
    images: int = 512
    width: int = 640
    height: int = 480
    val_images: int = 32
    seed: int = 0

    @property
    def key(self) -> str:
        text = f"v{VERSION}-{self.images}-{self.val_images}-{self.width}x{self.height}-{self.seed}"
        return f"synthetic-{self.images}-{self.width}x{self.height}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _image(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    low = rng.integers(0, 256, size=(max(h // 40, 2), max(w // 40, 2), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    field += rng.normal(0, 9, size=(h, w, 3)).astype(np.int16)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    labels = []
    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.integers(0, len(CLASSES)))
        bw, bh = int(rng.integers(w // 12, w // 3)), int(rng.integers(h // 12, h // 3))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        x1, y1 = x0 + bw, y0 + bh
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = tuple(255 - c for c in fill)
        if cls == 0:
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline, width=3)
        elif cls == 1:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=3)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)
        labels.append((cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, bw / w, bh / h))
    return img, labels


def _write_split(root: Path, split: str, n: int, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    for i in range(n):
        img, labels = _image(rng, spec.width, spec.height)
        img.save(root / "images" / split / f"{i:06d}.jpg", quality=90)
        rows = "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels)
        (root / "labels" / split / f"{i:06d}.txt").write_text(rows)


def generate(out: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the dataset into `out` (created; must not exist) and return its data.yaml."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    tmp = Path(tempfile.mkdtemp(prefix=".yoloprof-dataset-", dir=out.parent))
    try:
        _write_split(tmp, "train", spec.images, spec, rng)
        _write_split(tmp, "val", spec.val_images, spec, rng)
        names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
        (tmp / "data.yaml").write_text(
            "# Synthetic dataset written by `yoloprof dataset`: for measuring speed only.\n"
            f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}"
        )
        manifest = {"version": VERSION, "synthetic": True, "classes": CLASSES, **spec.__dict__}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, out)  # atomic: a half-written dataset is never seen under its name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "data.yaml"


def ensure(cache_dir: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The cached synthetic dataset for `spec`, generated on first use."""
    target = Path(cache_dir) / "datasets" / spec.key
    if (target / MANIFEST).is_file() and (target / "data.yaml").is_file():
        return target / "data.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return generate(target, spec)
    except OSError:
        if (target / MANIFEST).is_file():  # another scan generated it at the same moment
            return target / "data.yaml"
        raise


def read_manifest(data_yaml: Path) -> dict | None:
    path = Path(data_yaml).parent / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
