"""A YOLO-format dataset made on the spot, for measuring speed when no data is given.

The images are JPEGs whose decode and augmentation cost what photos cost: smooth colour fields
with sensor-like noise (so they compress to photo-like sizes, 100-200 KB at 640x480) and a few
filled shapes, each of which is a labelled box. It says nothing about accuracy.

Every Ultralytics task has its own: `SyntheticSpec(task=...)` writes detect boxes (here), or segment
polygons, pose keypoints, obb rotated boxes or classify class folders (task_labels.py).

A scan sizes it to its plan (`images_for`): Ultralytics caps a batch at the dataset's size, and each
DDP rank loads only its shard, so a dataset smaller than the largest batch would run a smaller batch
than the one named, and one barely larger would make every few steps an epoch boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from yoloprof.data import task_labels

CLASSES = ["rectangle", "ellipse", "triangle"]
MANIFEST = "yoloprof-dataset.json"
VERSION = 1

# How many training images a scan's built-in dataset holds (images_for):
DEFAULT_IMAGES = 512  # the floor, and all a scan of small batches gets (every CPU scan): the dataset it always had
MIN_STEPS_PER_EPOCH = 16  # an epoch at the scan's largest global batch is at least this many steps
# The ceiling: 8 GPUs x 128 per rank (the auto space's largest) x 16 steps. About 1.6 GB of JPEGs at 640x480;
# made at about 30 images/s per core (measured on a 2-core EPYC VM), BLOCK images per process at once.
MAX_IMAGES = 16384
# Images past the first DEFAULT_IMAGES are made in blocks of this many, each block from a seed of its own, so
# any number of processes makes the same dataset; the first DEFAULT_IMAGES are what they always were.
BLOCK = 256


def images_for(largest_batch: int) -> int:
    """Training images for a scan whose largest planned global batch is `largest_batch`: enough for
    MIN_STEPS_PER_EPOCH steps an epoch at that batch, between DEFAULT_IMAGES and MAX_IMAGES, and never fewer
    than the batch itself (so no trial on it, nor a compute probe at its batch per rank, runs a capped batch)."""
    return max(DEFAULT_IMAGES, int(largest_batch), min(MAX_IMAGES, MIN_STEPS_PER_EPOCH * int(largest_batch)))


@dataclass(frozen=True)
class SyntheticSpec:
    images: int = DEFAULT_IMAGES
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


def _image(
    rng: np.random.Generator, w: int, h: int
) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
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


def _write_split(root: Path, split: str, start: int, stop: int, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        if spec.task == "detect":
            img, labels = _image(rng, spec.width, spec.height)
            rows = "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels)
        else:
            img = _background(rng, spec.width, spec.height)
            rows = task_labels.draw_labelled(img, rng, spec.task, len(CLASSES))
        img.save(root / "images" / split / f"{i:06d}.jpg", quality=90)
        (root / "labels" / split / f"{i:06d}.txt").write_text(rows)


def _write_class_split(
    root: Path, split: str, start: int, stop: int, spec: SyntheticSpec, rng: np.random.Generator
) -> None:
    """classify: root/split/<class>/*.jpg, the classes in turn, so each split holds every class."""
    for name in CLASSES:
        (root / split / name).mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        cls = i % len(CLASSES)
        img = _background(rng, spec.width, spec.height)
        task_labels.draw_one(img, rng, cls)
        img.save(root / split / CLASSES[cls] / f"{i:06d}.jpg", quality=90)


def data_path(root: Path, task: str) -> Path:
    """What Ultralytics' `data=` takes for a dataset written here: the folder (classify) or its data.yaml."""
    return Path(root) if task == "classify" else Path(root) / "data.yaml"


def _count(spec: SyntheticSpec, n: int) -> int:
    return max(n, len(CLASSES)) if spec.task == "classify" else n  # classify: every class in every split


def _write_part(root: Path, spec: SyntheticSpec, start: int, stop: int) -> None:
    """One part of the dataset (also in a worker process). Part 0: the first training images, then the
    validation split, from one generator seeded with spec.seed, as the dataset was always made; a later
    block of training images: its own generator, seeded with (spec.seed, its first index)."""
    write = _write_class_split if spec.task == "classify" else _write_split
    if start == 0:
        rng = np.random.default_rng(spec.seed)
        write(root, "train", 0, stop, spec, rng)
        write(root, "val", 0, _count(spec, spec.val_images), spec, rng)
    else:
        write(root, "train", start, stop, spec, np.random.default_rng([spec.seed, start]))


def parts(spec: SyntheticSpec) -> list[tuple[int, int]]:
    """(start, stop) of the training images each part writes: the first DEFAULT_IMAGES, then BLOCKs."""
    total, head = _count(spec, spec.images), min(_count(spec, spec.images), DEFAULT_IMAGES)
    return [(0, head)] + [(s, min(s + BLOCK, total)) for s in range(head, total, BLOCK)]


def _write_all(root: Path, spec: SyntheticSpec, processes: int | None = None) -> None:
    """Every part, in this process and `processes - 1` fresh ones (python -m yoloprof.data.dataset): a fresh
    interpreter, not a fork of the scan process, which may hold torch's threads."""
    todo = parts(spec)
    n = min(processes or os.cpu_count() or 1, len(todo))
    shares: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for part in sorted(todo, key=lambda p: p[0] - p[1]):  # the largest first, each to the least loaded
        min(shares, key=lambda s: sum(b - a for a, b in s)).append(part)
    procs = []
    try:
        for share in shares[1:]:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "yoloprof.data.dataset",
                        str(root),
                        json.dumps(spec.__dict__),
                        json.dumps(share),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        for start, stop in shares[0]:
            _write_part(root, spec, start, stop)
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise RuntimeError(f"making the synthetic dataset failed in a helper process: {tail[0]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def generate(out: Path, spec: SyntheticSpec = SyntheticSpec(), processes: int | None = None) -> Path:
    """Write the dataset into `out` (created; must not exist) and return its `data=` (data_path).
    `processes`: how many make it at once (the CPU count); the dataset is the same whatever the number."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".yoloprof-dataset-", dir=out.parent))
    try:
        _write_all(tmp, spec, processes)
        if spec.task != "classify":
            names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
            pose = (
                f"kpt_shape: {task_labels.KPT_SHAPE}\nflip_idx: {task_labels.FLIP_IDX}\n" if spec.task == "pose" else ""
            )
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


if __name__ == "__main__":  # a helper process of _write_all: ROOT SPEC-JSON PARTS-JSON
    _root, _spec, _parts = sys.argv[1:4]
    for _start, _stop in json.loads(_parts):
        _write_part(Path(_root), SyntheticSpec(**json.loads(_spec)), _start, _stop)
