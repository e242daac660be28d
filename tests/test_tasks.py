"""Every Ultralytics task: segment, pose, obb and classify beside detect.

Fast: each synthetic format loads with Ultralytics' own dataset classes, datainfo reads it and names its
task, a model's task picks its trainer (YOLO26, YOLO11 and YOLOv8 alike), the data's task picks the default
model (YOLO26's), a model/data mismatch is one line and exit 2, old records load as detect. Slow: one tiny
real scan per task, detect included (2 gloo ranks, Ultralytics' own task trainer and validator), with a tiny
YOLO26 model per task (tests/fixtures/tiny26-*.yaml).
"""

from __future__ import annotations

import functools
import json
import subprocess

import pytest
import yaml
from rich.console import Console

from conftest import CPU_SCAN, FIXTURES
from yoloprof import cli
from yoloprof.data import datainfo, task_labels
from yoloprof.data.dataset import SyntheticSpec, generate
from yoloprof.errors import UsageError
from yoloprof.records import EpochCosts, ScanMeta, read_json

LABELLED = ("segment", "pose", "obb")


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """{task: data=} for every task but detect: 16 training images at 160x120 (a few DDP steps at imgsz 64)."""
    root = tmp_path_factory.mktemp("task-data")
    return {
        t: generate(root / t, SyntheticSpec(images=16, width=160, height=120, val_images=4, seed=2, task=t))
        for t in ("segment", "pose", "obb", "classify")
    }


def _columns(data_yaml) -> set[int]:
    rows = [
        line.split()
        for f in (data_yaml.parent / "labels" / "train").glob("*.txt")
        for line in f.read_text().splitlines()
    ]
    return {len(r) for r in rows}


@pytest.mark.parametrize("task", LABELLED)
def test_each_labelled_format_loads_with_ultralytics_own_dataset(task, task_data):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data_yaml = task_data[task]
    data = check_det_dataset(str(data_yaml))
    cfg = get_cfg(overrides=dict(task=task, imgsz=64, data=str(data_yaml)))
    ds = build_yolo_dataset(cfg, data["train"], 4, data, mode="train", stride=32)
    assert len(ds) == 16 and sum(len(lb["cls"]) for lb in ds.labels) >= 16  # 1-6 shapes per image, all read
    item = ds[0]
    n = len(item["cls"])
    if task == "segment":
        assert item["masks"].shape[-2:] == (16, 16)  # imgsz 64 / mask_ratio 4
        assert _columns(data_yaml) <= {7, 9, 49}  # triangles, rectangles, 24-point ellipses
    elif task == "pose":
        assert data["kpt_shape"] == task_labels.KPT_SHAPE == [17, 3] and data["flip_idx"] == task_labels.FLIP_IDX
        assert tuple(item["keypoints"].shape) == (n, 17, 3) and _columns(data_yaml) == {5 + 17 * 3}
    else:
        assert tuple(item["bboxes"].shape) == (n, 5) and _columns(data_yaml) == {9}  # xywh + angle; 4 corners
    info = datainfo.inspect(data_yaml)
    assert (info.task, info.train_images, info.val_images, info.synthetic) == (task, 16, 4, True)


def test_classify_folders_load_with_ultralytics_and_datainfo_counts_them(task_data):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import ClassificationDataset
    from ultralytics.data.utils import check_cls_dataset

    folder = task_data["classify"]
    data = check_cls_dataset(str(folder))
    assert data["nc"] == 3 and sorted(data["names"].values()) == ["ellipse", "rectangle", "triangle"]
    ds = ClassificationDataset(
        str(data["train"]),
        get_cfg(overrides=dict(task="classify", imgsz=64)),
        augment=True,
        prefix="train",
        names=data["names"],
    )
    assert len(ds) == 16 and tuple(ds[0]["img"].shape) == (3, 64, 64)
    info = datainfo.inspect(folder)
    assert (info.task, info.train_images, info.val_images) == ("classify", 16, 4)
    assert info.classes == ["ellipse", "rectangle", "triangle"]  # folder names, sorted, as Ultralytics reads them
    with pytest.raises(UsageError, match="needs train/ and val/ folders"):
        datainfo.inspect(folder / "train")


def test_labels_say_their_task():
    assert datainfo.labels_task({5}, pose=False) == "detect"
    assert datainfo.labels_task({9}, pose=False) == "obb"
    assert datainfo.labels_task({7, 9, 49}, pose=False) == "segment"
    assert datainfo.labels_task({5, 13}, pose=False) == "segment"
    assert datainfo.labels_task({56}, pose=True) == "pose"


def test_pose_labels_are_checked_against_kpt_shape(task_data, tmp_path):
    text = task_data["pose"].read_text().replace("kpt_shape: [17, 3]", "kpt_shape: [5, 3]")
    (tmp_path / "five.yaml").write_text(text)
    with pytest.raises(
        UsageError, match=r"has 56 columns; with the yaml's kpt_shape a pose label is .* \(20 columns\)"
    ):
        datainfo.inspect(tmp_path / "five.yaml")


def test_a_model_names_its_task_and_its_trainer():
    from ultralytics.models.yolo.classify import ClassificationTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.obb import OBBTrainer
    from ultralytics.models.yolo.pose import PoseTrainer
    from ultralytics.models.yolo.segment import SegmentationTrainer

    from yoloprof.probes import model_check
    from yoloprof.worker import tasks
    from yoloprof.worker.trainer import ScanMixin

    bases = {
        "detect": DetectionTrainer,
        "segment": SegmentationTrainer,
        "pose": PoseTrainer,
        "obb": OBBTrainer,
        "classify": ClassificationTrainer,
    }
    suffix = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb", "classify": "-cls"}
    # YOLO26 (the default), YOLO11 and YOLOv8 by name, each task; the tiny test models of YOLO11 and YOLO26
    named = [(f"{family}n{suffix[t]}.yaml", t) for family in ("yolo26", "yolo11", "yolov8") for t in bases]
    tiny = [(str(FIXTURES / f"{prefix}-{t}.yaml"), t) for prefix in ("tiny", "tiny26") for t in bases]
    for name, task in named + tiny:
        assert tasks.model_task(name) == task, name
        cls = tasks.trainer_for(name)
        assert issubclass(cls, ScanMixin) and issubclass(cls, bases[task]) and cls is tasks.scan_trainer(task)
        if "tiny" not in name:
            assert model_check.resolve(name, 3) == name  # built with its task's model class and the data's classes
    assert model_check.DEFAULT_MODELS == {t: f"yolo26n{suffix[t]}.yaml" for t in bases}
    # pin_memory reaches the build_dataloader the task's get_dataloader calls
    assert tasks.scan_trainer("classify").get_dataloader.__module__ == "ultralytics.models.yolo.classify.train"
    assert tasks.scan_trainer("pose").get_dataloader.__module__ == "ultralytics.models.yolo.detect.train"
    with pytest.raises(ValueError, match="yoloprof measures detect, segment"):
        tasks.scan_trainer("depth")


def test_a_checkpoint_carries_its_task(tmp_path):
    import torch
    from ultralytics.nn.tasks import PoseModel

    from yoloprof.probes import model_check

    for family in ("yolo11n", "yolo26n"):  # YOLO26's Pose26 head, with its one-to-one branch and RealNVP flow
        pt = tmp_path / f"{family}-pose.pt"
        torch.save({"model": PoseModel(f"{family}-pose.yaml", nc=1, verbose=False)}, pt)
        assert model_check.model_task(str(pt)) == "pose"
        assert model_check.resolve(str(pt), 3) == str(pt.resolve())


def test_the_data_picks_the_default_model_and_the_model_the_default_data(task_data, tmp_path, monkeypatch):
    from yoloprof.scan import request

    for task, model in [
        ("pose", "yolo26n-pose.yaml"),
        ("classify", "yolo26n-cls.yaml"),
        ("segment", "yolo26n-seg.yaml"),
        ("obb", "yolo26n-obb.yaml"),
    ]:
        req = request.ScanRequest(data=str(task_data[task]))
        assert request.resolve_data(req, Console(quiet=True)).task == task and req.model == model
    assert request.DEFAULT_MODEL == "yolo26n.yaml"  # detect data: req.model stays None, the scan builds this
    for model in ("yolo26n.yaml", "yolo11n.yaml", "yolov8n.yaml"):  # detect reads the corners as a box
        req = request.ScanRequest(data=str(task_data["obb"]), model=model)
        assert request.resolve_data(req, Console(quiet=True)).task == "detect"
    for model, task in [("yolo11n-seg.yaml", "segment"), ("yolov8n-obb.yaml", "obb")]:  # named: as given
        req = request.ScanRequest(data=str(task_data[task]), model=model)
        assert request.resolve_data(req, Console(quiet=True)).task == task and req.model == model
    # no --data: the synthetic dataset of the model's task, in the cache (small here: the default is 512 images)
    monkeypatch.setenv("YOLOPROF_CACHE", str(tmp_path))
    monkeypatch.setattr(
        request, "SyntheticSpec", functools.partial(SyntheticSpec, images=3, width=64, height=48, val_images=2)
    )
    info = request.resolve_data(request.ScanRequest(model="yolo26n-pose.yaml"), Console(quiet=True))
    assert info.task == "pose" and info.synthetic and "synthetic-pose-3-64x48-" in info.data
    assert yaml.safe_load(open(info.data))["kpt_shape"] == [17, 3]


MISMATCH = [
    (
        "yolo26n-pose.yaml",
        "detect",
        "is a pose model, but --data",
        "holds detection labels (class x y w h); give a pose "
        "data yaml (with kpt_shape), or a detect model (e.g. --model yolo26n.yaml)",
    ),
    ("yolo11n.yaml", "classify", "is a detect model, but --data", "holds a classify folder"),
    (
        "yolo26n-cls.yaml",
        "segment",
        "is a classify model, but --data",
        "give a classify folder (train/<class>/, val/<class>/)",
    ),
    ("yolo11n-obb.yaml", "pose", "is an obb model", "or a pose model (e.g. --model yolo26n-pose.yaml)"),
]


@pytest.mark.parametrize("model,data,first,second", MISMATCH, ids=[m[0] for m in MISMATCH])
def test_a_model_and_data_of_different_tasks_is_one_line_and_exit_2(
    model, data, first, second, task_data, tiny_data, monkeypatch, capsys, tmp_path
):
    from yoloprof.probes import environment
    from test_bad_input import fake_env

    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env([]))
    path = tiny_data if data == "detect" else task_data[data]
    code = cli.main(["scan", "--model", model, "--data", str(path), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and first in lines[0] and second in lines[0], err
    assert not (tmp_path / "s").exists()


def test_records_from_before_tasks_load_as_detect():
    meta = read_json(CPU_SCAN / "scan.json", ScanMeta)
    assert "task" not in json.loads((CPU_SCAN / "scan.json").read_text())
    assert meta.task == "detect" and meta.dataset.task == "detect"


def test_the_dataset_command_writes_each_task(tmp_path, capsys):
    assert (
        cli.main(["dataset", "--task", "pose", "--out", str(tmp_path / "p"), "--images", "2", "--size", "64x48"]) == 0
    )
    assert "kpt_shape: [17, 3]" in (tmp_path / "p" / "data.yaml").read_text()
    assert (
        cli.main(["dataset", "--task", "classify", "--out", str(tmp_path / "c"), "--images", "3", "--size", "64x48"])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "c" / "train").iterdir()) == ["ellipse", "rectangle", "triangle"]
    assert "data folder (classify)" in capsys.readouterr().out


# -- one tiny real scan per task --------------------------------------------------------------------------------

# What each task's validator prints in the epoch job's rank log (Ultralytics' own get_desc).
VALIDATOR = {"detect": "Box(P", "segment": "Mask(P", "pose": "Pose(P", "obb": "mAP50-95)", "classify": "top1_acc"}


def check_task_scan(task: str, out, stdout: str) -> None:
    """A real scan of `task` trained and validated with the task's own trainer, loss and validator."""
    from ultralytics.cfg import get_cfg

    from scans import results

    found = results(out)
    assert found and all(r.status == "ok" and r.img_per_s > 0 for r in found.values()), found
    assert (f"task: {task} (the model's" in stdout) == (task != "detect")  # detect, the default, goes unsaid
    meta = read_json(out / "scan.json", ScanMeta)
    assert meta.task == task and meta.dataset.task == task
    costs = read_json(out / "epoch" / "w2.json", EpochCosts)  # validation with the task's validator, timed
    assert costs.status == "ok" and len(costs.val.s) == 2 and all(s > 0 for s in costs.val.s + costs.save.s)
    assert VALIDATOR[task] in (out / "epoch" / "w2" / "rank0.log").read_text(errors="replace")
    for r in found.values():
        log = (out / "trials" / r.trial_id / "rank0.log").read_text(errors="replace")
        assert ("l1_loss" in log) == (task != "classify")  # E2ELoss's names for YOLO26's heads (reg_max 1: no DFL)
    assert f'id="scan-title">{task} &middot;' in (out / "report.html").read_text()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "task" not in best
    get_cfg(overrides=best)  # Ultralytics takes it as it is


@pytest.mark.slow
def test_the_shared_scan_trains_and_validates_detect(real_scan):
    """detect, on the scan test_scan_cpu.py reads (yolo26n.yaml: YOLO26's end-to-end head, E2ELoss)."""
    out, proc, _ = real_scan
    check_task_scan("detect", out, proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segment", "pose", "obb", "classify"])
def test_a_real_scan_trains_and_validates_each_task(task, task_data, tmp_path):
    """With the tiny YOLO26 model of each task (end-to-end heads, E2ELoss); detect is the shared scan's (above);
    tiny-detect.yaml's YOLO11 head scans in tests/test_knobs_cpu.py and tests/test_failures.py."""
    from scans import scan_cmd

    out = tmp_path / "s"
    cmd = scan_cmd(
        task_data[task],
        out,
        "--model",
        str(FIXTURES / f"tiny26-{task}.yaml"),
        "--batch",
        "4",
        "--workers",
        "0",
        epoch_job=True,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    check_task_scan(task, out, proc.stdout)
