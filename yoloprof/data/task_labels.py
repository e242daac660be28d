"""The synthetic dataset's shapes and labels for segment, pose, obb and classify (detect: dataset._image).

Each shape (a rectangle, an ellipse or a triangle, the same three classes as detect) is a polygon in
pixels, drawn filled on the photo-like background, and labelled in the task's Ultralytics format:

- segment: `class x1 y1 x2 y2 ...`, the shape's outline (4, 24 or 3 points), rotated at random;
- pose: `class cx cy w h` and 17 keypoints `x y 2` (COCO's count, so yolo26n-pose.yaml's head is the
  size it is in training), upright, left/right pairs mirrored so flip_idx holds;
- obb: `class x1 y1 x2 y2 x3 y3 x4 y4`, the corners of the shape's rotated box;
- classify: one large shape per image, its class the folder the image is written to.

Coordinates are normalised to 0-1 by the image's width and height. Speed only: says nothing about accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

TASKS = ("detect", "segment", "pose", "obb", "classify")
KPT_SHAPE = [17, 3]  # COCO-pose's: what yolo26n-pose.yaml is built for
FLIP_IDX = [0] + [i + d for i in range(1, KPT_SHAPE[0], 2) for d in (1, 0)]  # 0, then each (left, right) swapped
ELLIPSE_POINTS = 24


@dataclass(frozen=True)
class Shape:
    cls: int  # 0 rectangle, 1 ellipse, 2 triangle (dataset.CLASSES)
    cx: float
    cy: float
    rx: float  # half-width and half-height in the shape's own frame, pixels
    ry: float
    angle: float  # radians, counter-clockwise in the image

    def _place(self, pts: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        x, y = pts[:, 0] * self.rx, pts[:, 1] * self.ry
        return np.stack([self.cx + c * x + s * y, self.cy - s * x + c * y], axis=1)

    def outline(self) -> np.ndarray:
        """The polygon drawn and, for segment, labelled: (N, 2) pixels."""
        if self.cls == 0:
            unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
        elif self.cls == 1:
            t = np.linspace(0, 2 * math.pi, ELLIPSE_POINTS, endpoint=False)
            unit = np.stack([np.cos(t), np.sin(t)], axis=1)
        else:
            unit = np.array([[0, -1], [1, 1], [-1, 1]], dtype=float)
        return self._place(unit)

    def corners(self) -> np.ndarray:
        """The rotated box around the shape (obb): (4, 2) pixels."""
        return self._place(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float))

    def keypoints(self) -> np.ndarray:
        """17 points inside the box: 0 at the top, then (left, right) pairs mirrored about the vertical axis."""
        t = np.linspace(0, math.pi, (KPT_SHAPE[0] + 1) // 2 + 1)[1:-1]  # 8 angles strictly between top and bottom
        pairs = [p for a in t for p in ((-math.sin(a), -math.cos(a)), (math.sin(a), -math.cos(a)))]
        return self._place(0.9 * np.array([(0.0, -1.0), *pairs], dtype=float))


def sample(rng: np.random.Generator, w: int, h: int, cls: int, large: bool, rotate: bool) -> Shape:
    """A shape that lies wholly inside the image, whatever its rotation."""
    lo, hi = (1 / 6, 1 / 3) if large else (1 / 24, 1 / 6)
    rx, ry = float(rng.uniform(w * lo, w * hi)), float(rng.uniform(h * lo, h * hi))
    angle = float(rng.uniform(0, math.pi)) if rotate else 0.0
    ex, ey = (math.hypot(rx, ry),) * 2 if rotate else (rx, ry)
    ex, ey = min(ex, w / 2 - 1), min(ey, h / 2 - 1)
    return Shape(cls, float(rng.uniform(ex, w - ex)), float(rng.uniform(ey, h - ey)), rx, ry, angle)


def _norm(pts: np.ndarray, w: int, h: int) -> list[float]:
    return [float(v) for v in np.clip(pts / np.array([w, h], dtype=float), 0.0, 1.0).reshape(-1)]


def label_row(shape: Shape, task: str, w: int, h: int) -> str:
    """One label line in the task's Ultralytics format."""
    if task == "segment":
        values = _norm(shape.outline(), w, h)
    elif task == "obb":
        values = _norm(shape.corners(), w, h)
    elif task == "pose":
        box = shape.outline()
        (x0, y0), (x1, y1) = box.min(axis=0), box.max(axis=0)
        values = _norm(np.array([[(x0 + x1) / 2, (y0 + y1) / 2], [x1 - x0, y1 - y0]]), w, h)
        for x, y in zip(*[iter(_norm(shape.keypoints(), w, h))] * 2):
            values += [x, y, 2.0]  # 2: visible
    else:
        raise ValueError(f"no label rows for task {task!r}")
    return f"{shape.cls} " + " ".join(f"{v:.6f}" for v in values) + "\n"


def _draw(img: Image.Image, shape: Shape, rng: np.random.Generator) -> None:
    fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
    outline = tuple(255 - c for c in fill)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in shape.outline()], fill=fill, outline=outline)


def draw_labelled(img: Image.Image, rng: np.random.Generator, task: str, classes: int) -> str:
    """Draws 1-6 shapes on `img` (in place) and returns their label file's text (segment, pose, obb)."""
    w, h = img.size
    rows = []
    for _ in range(int(rng.integers(1, 7))):
        shape = sample(rng, w, h, int(rng.integers(0, classes)), large=False, rotate=task != "pose")
        _draw(img, shape, rng)
        rows.append(label_row(shape, task, w, h))
    return "".join(rows)


def draw_one(img: Image.Image, rng: np.random.Generator, cls: int) -> None:
    """classify: one large shape of class `cls`, rotated at random."""
    w, h = img.size
    _draw(img, sample(rng, w, h, cls, large=True, rotate=True), rng)
