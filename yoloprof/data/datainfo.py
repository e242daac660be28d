"""Read and check a user's data yaml before any trial starts. Pure: pyyaml and the filesystem.

A dataset Ultralytics cannot read would fail every trial; finding it here turns n failed
trials into one clear line.
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
        fix = ("Ultralytics finds labels by replacing /images/ in an image's path with /labels/: keep the images "
               "in an images/ folder and their .txt labels in a labels/ folder beside it")
    raise UsageError(f"{path}: none of the {len(images)} {split} images has a label file "
                     f"(looked for {first.name} in {first.parent}); {fix}")  # fmt: skip


def check_labels(images: list[Path], nc: int) -> None:
    for image in images[:LABEL_CHECK_LIMIT]:
        label = _label_file(image)
        if not label.is_file():
            continue  # a background image: Ultralytics allows it
        for lineno, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != 5 and (len(cols) < 7 or len(cols) % 2 == 0):
                raise UsageError(
                    f"{label}:{lineno} has {len(cols)} columns; a detection label is 'class x y w h' (5 columns)"
                )
            try:
                cls = int(float(cols[0]))
                [float(c) for c in cols[1:]]
            except ValueError:
                raise UsageError(f"{label}:{lineno} is not numbers: '{line.strip()[:60]}'") from None
            if not 0 <= cls < nc:
                raise UsageError(f"{label}:{lineno} has class id {cls}, but the data yaml names {nc} classes (0..{nc - 1})")


def inspect(data_yaml: str | Path) -> DatasetInfo:
    path = Path(data_yaml).expanduser()
    if not path.is_file():
        raise UsageError(f"--data {data_yaml}: no such file; give the path of a YOLO data yaml")
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
        raise UsageError(f"--data {path}: 'path: {data.get('path')}' is not a folder (from {Path.cwd()}); use an absolute path")
    names = _names(data, path)
    train = _split_images(root, data["train"], "train", path)
    val = _split_images(root, data["val"], "val", path)
    require_labels(train, "train", path)
    check_labels(train, len(names))
    check_labels(val, len(names))
    manifest = synthetic.read_manifest(path)
    return DatasetInfo(
        data=str(path.resolve()),
        train_images=len(train),
        val_images=len(val),
        classes=names,
        synthetic=bool(manifest and manifest.get("synthetic")),
        image_size=f"{manifest['width']}x{manifest['height']}" if manifest else None,
    )
