"""Read and check a user's dataset before any trial starts. Pure: pyyaml and the filesystem.

A dataset Ultralytics cannot read would fail every trial; finding it here turns n failed
trials into one clear line. A data yaml (detect, segment, pose, obb: which one its labels say)
or a classify folder (train/<class>/*.jpg, val/<class>/*.jpg).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from yoloprof.data import dataset as synthetic
from yoloprof.errors import UsageError
from yoloprof.records import DatasetInfo

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm", ".heic"}
LABEL_CHECK_LIMIT = 2000  # label files read per split; enough to catch a systematic error quickly
IMAGES_DIR = f"{os.sep}images{os.sep}"  # Ultralytics swaps the last one for /labels/ to find an image's labels


def _names(data: dict, path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise UsageError(f"{path}: 'names' keys must be class ids 0..n-1") from None
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(data.get("nc"), int):
        return [f"class{i}" for i in range(data["nc"])]
    raise UsageError(f"{path}: no 'names' list of classes; add e.g. names: {{0: person, 1: car}}")


def _split_images(root: Path, entry, split: str, path: Path) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    images.append(f if f.is_absolute() else p.parent / f)
        else:
            raise UsageError(f"{path}: {split} path {p} does not exist; fix '{split}:' (relative to 'path: {root}')")
    if not images:
        raise UsageError(f"{path}: the {split} folder holds no images ({', '.join(sorted(IMAGE_EXTS)[:4])}, ...)")
    return images


def files_bytes(paths) -> int | None:
    """The files' bytes on disk (what an epoch reads through the page cache); None where one cannot be stat'ed."""
    total = 0
    for f in paths:
        try:
            total += os.stat(f).st_size
        except OSError:
            return None
    return total


def _label_file(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels (data/utils.py img2label_paths), to the letter:
    the last '/images/' in the path string becomes '/labels/', and the extension becomes .txt."""
    return Path(f"{os.sep}labels{os.sep}".join(str(image).rsplit(IMAGES_DIR, 1)).rsplit(".", 1)[0] + ".txt")


def require_labels(images: list[Path], split: str, path: Path) -> None:
    """Ultralytics stops training with "No labels found" when not one train image has a label file
    (some without are background images, which is fine). Stops at the first label it finds, so a
    labelled dataset costs one stat; an unlabelled one costs one stat per image."""
    if any(_label_file(image).is_file() for image in images):
        return
    first = _label_file(images[0])
    if IMAGES_DIR in str(images[0]):
        fix = "put one .txt per image, named like it, in the labels/ folder beside images/"
    else:
        fix = (
            "Ultralytics finds labels by replacing /images/ in an image's path with /labels/: keep the images "
            "in an images/ folder and their .txt labels in a labels/ folder beside it"
        )
    raise UsageError(
        f"{path}: none of the {len(images)} {split} images has a label file "
        f"(looked for {first.name} in {first.parent}); {fix}"
    )


def _kpt_columns(data: dict, path: Path) -> int | None:
    """Columns of a pose label (5 + keypoints x dims), from the yaml's kpt_shape; None without one."""
    shape = data.get("kpt_shape")
    if shape is None:
        return None
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(v, int) and v > 0 for v in shape)
        and shape[1] in (2, 3)
    ):
        raise UsageError(f"{path}: kpt_shape {shape} is not [keypoints, 2 or 3], e.g. kpt_shape: [17, 3]")
    return 5 + shape[0] * shape[1]


def check_labels(images: list[Path], nc: int, kpt_columns: int | None = None) -> set[int]:
    """Checks each label row; returns the column counts seen (what the labels' format is)."""
    seen: set[int] = set()
    for image in images[:LABEL_CHECK_LIMIT]:
        label = _label_file(image)
        if not label.is_file():
            continue  # a background image: Ultralytics allows it
        for lineno, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
            cols = line.split()
            if not cols:
                continue
            if kpt_columns is not None and len(cols) != kpt_columns:
                raise UsageError(
                    f"{label}:{lineno} has {len(cols)} columns; with the yaml's kpt_shape a pose label is "
                    f"'class x y w h' and the keypoints ({kpt_columns} columns)"
                )
            if kpt_columns is None and len(cols) != 5 and (len(cols) < 7 or len(cols) % 2 == 0):
                raise UsageError(
                    f"{label}:{lineno} has {len(cols)} columns; a detection label is 'class x y w h' (5 columns)"
                )
            seen.add(len(cols))
            try:
                cls = int(float(cols[0]))
                [float(c) for c in cols[1:]]
            except ValueError:
                raise UsageError(f"{label}:{lineno} is not numbers: '{line.strip()[:60]}'") from None
            if not 0 <= cls < nc:
                raise UsageError(
                    f"{label}:{lineno} has class id {cls}, but the data yaml names {nc} classes (0..{nc - 1})"
                )
    return seen


def labels_task(columns: set[int], pose: bool) -> str:
    """The task a yaml's labels are written for: pose (kpt_shape), obb (8 coordinates: 4 corners), segment
    (polygons), else detect. A 4-point polygon reads as obb; Ultralytics' segment and detect read it too."""
    if pose:
        return "pose"
    if columns and columns == {9}:
        return "obb"
    return "segment" if any(c > 6 for c in columns) else "detect"


# Which models' tasks Ultralytics trains on data in each format (detect and segment read polygons and
# corner points; pose labels with a detect model would be read as polygons; a classify folder has no labels).
COMPATIBLE = {
    "detect": ("detect",),
    "segment": ("segment", "detect"),
    "obb": ("obb", "detect", "segment"),
    "pose": ("pose",),
    "classify": ("classify",),
}
FORMATS = {
    "detect": "detection labels (class x y w h)",
    "segment": "segment polygons",
    "obb": "oriented boxes (class and 4 corners)",
    "pose": "pose labels (a kpt_shape)",
    "classify": "a classify folder (train/<class>/ images)",
}


def _class_split(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def inspect_classify(folder: Path) -> DatasetInfo:
    """A classify dataset as Ultralytics' check_cls_dataset reads it: train/ and val/ (or valid/, validation/,
    test/), one folder per class, the classes from train's folder names in sorted order."""
    train = _class_split(folder, ("train",))
    val = _class_split(folder, ("val", "validation", "valid", "test"))
    if train is None or val is None:
        raise UsageError(
            f"--data {folder}: a folder is a classify dataset and needs train/ and val/ folders, each "
            "with one folder of images per class (train/cat/1.jpg); a detect dataset is a data yaml"
        )
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    if not classes:
        raise UsageError(f"--data {folder}: {train} holds no class folders (train/<class>/*.jpg)")
    counts, sizes = [], []
    for split in (train, val):
        files = [f for f in split.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.parent != split]
        if not files:
            raise UsageError(f"--data {folder}: {split} holds no images in class folders ({split}/<class>/*.jpg)")
        counts.append(len(files))
        sizes.append(files_bytes(files))
    manifest = synthetic.read_manifest(folder)
    return DatasetInfo(
        data=str(folder.resolve()),
        train_images=counts[0],
        val_images=counts[1],
        classes=classes,
        synthetic=bool(manifest and manifest.get("synthetic")),
        image_size=f"{manifest['width']}x{manifest['height']}" if manifest else None,
        task="classify",
        train_bytes=sizes[0],
        val_bytes=sizes[1],
    )


def inspect(data_yaml: str | Path) -> DatasetInfo:
    path = Path(data_yaml).expanduser()
    if path.is_dir():
        return inspect_classify(path)
    if not path.is_file():
        raise UsageError(f"--data {data_yaml}: no such file; give the path of a YOLO data yaml (or a classify folder)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--data {path}: cannot be read as YAML ({first})") from None
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise UsageError(f"--data {path}: needs 'train:' and 'val:' entries (see Ultralytics' dataset format)")
    # Ultralytics resolves a relative 'path:' against the working directory, not the yaml's folder.
    root = Path(str(data["path"])).expanduser() if data.get("path") else path.parent
    if not root.is_absolute():
        root = Path.cwd() / root
    if not root.is_dir():
        raise UsageError(
            f"--data {path}: 'path: {data.get('path')}' is not a folder (from {Path.cwd()}); use an absolute path"
        )
    names = _names(data, path)
    train = _split_images(root, data["train"], "train", path)
    val = _split_images(root, data["val"], "val", path)
    require_labels(train, "train", path)
    kpt = _kpt_columns(data, path)
    columns = check_labels(train, len(names), kpt) | check_labels(val, len(names), kpt)
    manifest = synthetic.read_manifest(path)
    task = (
        manifest.get("task", "detect")
        if manifest and manifest.get("synthetic")
        else labels_task(columns, kpt is not None)
    )
    return DatasetInfo(
        data=str(path.resolve()),
        train_images=len(train),
        val_images=len(val),
        classes=names,
        synthetic=bool(manifest and manifest.get("synthetic")),
        image_size=f"{manifest['width']}x{manifest['height']}" if manifest else None,
        task=task,
        train_bytes=files_bytes(train),
        val_bytes=files_bytes(val),
    )
