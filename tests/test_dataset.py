"""The built-in dataset: YOLO format Ultralytics reads, photo-like JPEGs, generated once."""

from __future__ import annotations


import pytest
import yaml

from yoloprof.data import datainfo, dataset
from yoloprof.data.dataset import SyntheticSpec


def test_generated_dataset_is_valid_yolo_format(tiny_data):
    root = tiny_data.parent
    data = yaml.safe_load(tiny_data.read_text())
    assert data["names"] == {0: "rectangle", 1: "ellipse", 2: "triangle"}
    info = datainfo.inspect(tiny_data)
    assert (info.train_images, info.val_images, info.synthetic, info.image_size) == (16, 4, True, "160x120")
    for label in (root / "labels" / "train").glob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        assert 1 <= len(rows) <= 6
        for cls, *box in rows:
            assert int(cls) in (0, 1, 2) and all(0.0 <= float(v) <= 1.0 for v in box)


def test_images_compress_like_photos(tmp_path):
    data = dataset.generate(tmp_path / "d", SyntheticSpec(images=4, val_images=2))
    sizes = [p.stat().st_size for p in (data.parent / "images" / "train").glob("*.jpg")]
    # COCO photos at 640x480 are ~100-200 KB; flat synthetic images would be a few KB and decode too fast
    assert all(60_000 < s < 300_000 for s in sizes), sizes


def test_ensure_generates_once_and_reuses(tmp_path):
    spec = SyntheticSpec(images=3, width=64, height=48, val_images=2)
    first = dataset.ensure(tmp_path, spec)
    stamp = first.stat().st_mtime_ns
    again = dataset.ensure(tmp_path, spec)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("datasets/.yoloprof-dataset-*"))  # no temp folder left behind


def test_generate_refuses_an_existing_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    with pytest.raises(OSError):
        dataset.generate(tmp_path / "d", SyntheticSpec(images=2, width=64, height=48, val_images=2))
    assert (tmp_path / "d" / "keep.txt").is_file()


def test_each_task_has_its_own_cache_key_and_detect_keeps_the_one_it_had():
    from yoloprof.data import task_labels

    assert SyntheticSpec().key == "synthetic-512-640x480-d32584d8"  # caches made before tasks stay valid
    keys = {SyntheticSpec(task=t).key for t in task_labels.TASKS}
    assert len(keys) == 5 and SyntheticSpec(task="pose").key.startswith("synthetic-pose-512-640x480-")
    with pytest.raises(ValueError, match="one of detect, segment, pose, obb, classify"):
        SyntheticSpec(task="depth")


def test_a_task_dataset_records_its_task_and_ensure_finds_a_classify_folder(tmp_path):
    spec = SyntheticSpec(images=3, width=64, height=48, val_images=2, task="classify")
    folder = dataset.ensure(tmp_path, spec)
    assert folder.is_dir() and dataset.read_manifest(folder)["task"] == "classify"
    assert dataset.ensure(tmp_path, spec) == folder  # found again, not regenerated
    assert sum(1 for _ in (folder / "val").rglob("*.jpg")) == 3  # every class in every split
