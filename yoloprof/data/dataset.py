"""A YOLO-format dataset made on the spot, for measuring speed when no data is given.

The images are JPEGs whose decode and augmentation cost what photos cost: smooth colour fields
with sensor-like noise (so they compress to photo-like sizes, 100-200 KB at 640x480) and a few
filled shapes, each of which is a labelled box. It says nothing about accuracy.

Every Ultralytics task has its own: `SyntheticSpec(task=...)` writes detect boxes (here), or segment
polygons, pose keypoints, obb rotated boxes or classify class folders (task_labels.py).
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

from yoloprof.data import task_labels

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
    task: str = "detect"  # detect, segment, pose, obb or classify: the label format written

    def __post_init__(self):
        if self.task not in task_labels.TASKS:
            raise ValueError(f"task {self.task!r}: one of {', '.join(task_labels.TASKS)}")

    @property
    def key(self) -> str:
        text = f"v{VERSION}-{self.images}-{self.val_images}-{self.width}x{self.height}-{self.seed}"
        name = f"{self.images}-{self.width}x{self.height}"
        if self.task != "detect":  # detect keeps the key it always had: caches made before tasks stay valid
            text, name = f"{text}-{self.task}", f"{self.task}-{name}"
        return f"synthetic-{name}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth colour field with sensor-like noise: compresses and decodes like a photo."""
    low = rng.integers(0, 256, size=(max(h // 40, 2), max(w // 40, 2), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    field += rng.normal(0, 9, size=(h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _image(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    img = _background(rng, w, h)
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
        if spec.task == "detect":
            img, labels = _image(rng, spec.width, spec.height)
            rows = "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels)
        else:
            img = _background(rng, spec.width, spec.height)
            rows = task_labels.draw_labelled(img, rng, spec.task, len(CLASSES))
        img.save(root / "images" / split / f"{i:06d}.jpg", quality=90)
        (root / "labels" / split / f"{i:06d}.txt").write_text(rows)


def _write_class_split(root: Path, split: str, n: int, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    """classify: root/split/<class>/*.jpg, the classes in turn, so each split holds every class."""
    for name in CLASSES:
        (root / split / name).mkdir(parents=True)
    for i in range(max(n, len(CLASSES))):
        cls = i % len(CLASSES)
        img = _background(rng, spec.width, spec.height)
        task_labels.draw_one(img, rng, cls)
        img.save(root / split / CLASSES[cls] / f"{i:06d}.jpg", quality=90)


def data_path(root: Path, task: str) -> Path:
    """What Ultralytics' `data=` takes for a dataset written here: the folder (classify) or its data.yaml."""
    return Path(root) if task == "classify" else Path(root) / "data.yaml"


def generate(out: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the dataset into `out` (created; must not exist) and return its `data=` (data_path)."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    tmp = Path(tempfile.mkdtemp(prefix=".yoloprof-dataset-", dir=out.parent))
    try:
        if spec.task == "classify":
            _write_class_split(tmp, "train", spec.images, spec, rng)
            _write_class_split(tmp, "val", spec.val_images, spec, rng)
        else:
            _write_split(tmp, "train", spec.images, spec, rng)
            _write_split(tmp, "val", spec.val_images, spec, rng)
            names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
            pose = (f"kpt_shape: {task_labels.KPT_SHAPE}\nflip_idx: {task_labels.FLIP_IDX}\n"
                    if spec.task == "pose" else "")  # fmt: skip
            (tmp / "data.yaml").write_text(
                f"# Synthetic {spec.task} dataset written by `yoloprof dataset`: for measuring speed only.\n"
                f"path: {out.resolve()}\ntrain: images/train\nval: images/val\n{pose}names:\n{names}"
            )
        manifest = {"version": VERSION, "synthetic": True, "classes": CLASSES, **spec.__dict__}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, out)  # atomic: a half-written dataset is never seen under its name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return data_path(out, spec.task)


def ensure(cache_dir: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The cached synthetic dataset for `spec`, generated on first use."""
    target = Path(cache_dir) / "datasets" / spec.key
    if (target / MANIFEST).is_file() and data_path(target, spec.task).exists():
        return data_path(target, spec.task)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return generate(target, spec)
    except OSError:
        if (target / MANIFEST).is_file():  # another scan generated it at the same moment
            return data_path(target, spec.task)
        raise


def read_manifest(data: Path) -> dict | None:
    """The manifest beside a data yaml, or in a classify folder; None for a user's dataset."""
    data = Path(data)
    path = (data if data.is_dir() else data.parent) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
