"""Every input mistake: one line on stderr naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

import os
import shutil
import sys
import types
import zipfile
from pathlib import Path

import pytest

from yoloprof.probes import environment, model_check
from yoloprof import cli
from yoloprof.data import datainfo
from yoloprof.errors import UsageError
from yoloprof.records import Environment, GpuInfo

GPUS = [GpuInfo(0, "NVIDIA H100", 81559.0), GpuInfo(1, "NVIDIA H100", 81559.0)]


def fake_env(gpus):
    return Environment(
        "h", "linux", "3.11", 16, 64000.0, "2.14.1", "8.4.190", "13.0", "2.30", None, gpus, ["batch", "workers"], {}
    )


def write_bad_checkpoints(folder: Path) -> None:
    """.pt files a trial's Ultralytics loader would fail on, each in its own way."""
    import torch

    (folder / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.pt").write_bytes(b"")
    (folder / "notes.pt").write_text("my notes, renamed\n")
    torch.save([1, 2, 3], folder / "list.pt")
    torch.save({"epoch": 3, "optimizer": None}, folder / "nomodel.pt")
    with zipfile.ZipFile(folder / "archive.pt", "w") as z:
        z.writestr("readme.txt", "not a torch file")
    gone = types.ModuleType("yoloprof_gone_module")  # pickled from a module that is then uninstalled
    exec("class Net: pass", gone.__dict__)
    sys.modules[gone.__name__] = gone
    try:
        torch.save({"model": gone.Net()}, folder / "foreign.pt")
    finally:
        del sys.modules[gone.__name__]


@pytest.fixture
def cases(tmp_path, tiny_data):
    root = tiny_data.parent
    (tmp_path / "notyaml.yaml").write_text("train: [unclosed\n")
    (tmp_path / "nosplits.yaml").write_text("names: [a]\n")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty.yaml").write_text(f"path: {tmp_path / 'empty'}\ntrain: images\nval: images\nnames: [a]\n")
    bad = tmp_path / "badlabels"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    (bad / "images" / "a.jpg").write_bytes((root / "images" / "train" / "000000.jpg").read_bytes())
    (bad / "images" / "b.jpg").write_bytes((root / "images" / "train" / "000001.jpg").read_bytes())
    (bad / "labels" / "a.txt").write_text("0 0.5 0.5 0.2\n")
    (bad / "labels" / "b.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (tmp_path / "cols.yaml").write_text(f"path: {bad}\ntrain: images/a.jpg\nval: images\nnames: [a]\n")
    lst = bad / "a.txt"
    lst.write_text(str(bad / "images" / "a.jpg") + "\n")
    (tmp_path / "cols.yaml").write_text(f"path: {bad}\ntrain: a.txt\nval: a.txt\nnames: [a]\n")
    lst2 = bad / "b.txt"
    lst2.write_text(str(bad / "images" / "b.jpg") + "\n")
    (tmp_path / "cls.yaml").write_text(f"path: {bad}\ntrain: b.txt\nval: b.txt\nnames: [a]\n")
    nolabels = tmp_path / "nolabels"
    (nolabels / "images" / "train").mkdir(parents=True)
    for name in ("000000.jpg", "000001.jpg"):
        (nolabels / "images" / "train" / name).write_bytes((root / "images" / "train" / name).read_bytes())
    (tmp_path / "nolabels.yaml").write_text(f"path: {nolabels}\ntrain: images/train\nval: images/train\nnames: [a]\n")
    write_bad_checkpoints(tmp_path)
    (tmp_path / "notascan").mkdir()
    (tmp_path / "notascan" / "x.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    return tmp_path


TABLE = [
    # (args, fragment of the one line, uses a GPU machine)
    (["--data", "{t}/missing.yaml"], "no such file", False),
    (["--data", "{t}/notyaml.yaml"], "cannot be read as YAML", False),
    (["--data", "{t}/nosplits.yaml"], "needs 'train:' and 'val:'", False),
    (["--data", "{t}/empty.yaml"], "holds no images", False),
    (["--data", "{t}/cols.yaml"], "a.txt:1 has 4 columns", False),
    (["--data", "{t}/cls.yaml"], "b.txt:1 has class id 7", False),
    (["--model", "yolo99z.yaml"], "not a model Ultralytics knows", False),
    (["--model", "{t}/weights.pt"], "no such weights file", False),
    (["--model", "{t}/garbage.pt"], "not a readable PyTorch checkpoint (UnpicklingError: invalid load key", False),
    (["--model", "{t}/empty.pt"], "the file is empty; give a checkpoint saved by Ultralytics (best.pt/last.pt)", False),
    (["--model", "{t}/notes.pt"], "not a readable PyTorch checkpoint (UnpicklingError", False),
    (["--model", "{t}/list.pt"], "holds a pickled list, not an Ultralytics checkpoint; give a checkpoint saved", False),
    (["--model", "{t}/nomodel.pt"], "holds no model under 'model' or 'ema'", False),
    (["--model", "{t}/archive.pt"], "not a readable PyTorch checkpoint (RuntimeError", False),
    (["--model", "{t}/foreign.pt"], "it needs the Python module 'yoloprof_gone_module', which is not installed", False),
    (["--model", "yolo11n-cls.yaml"], "is a classify model, but --data", False),  # detect data (tests/test_tasks.py)
    (["--data", "{t}/nolabels.yaml"], "none of the 2 train images has a label file", False),
    (["--gpus", "0"], "has no GPU visible", False),
    (["--gpus", "0,5"], "GPU 5 is not there", True),
    (["--gpus", "0,0"], "repeats a value", True),
    (["--nproc", "0"], "--nproc 0", False),
    (["--batch", ""], "empty value", False),
    (["--batch", "0"], "--batch '0' is not a whole number >= 1", False),
    (["--workers", "-1"], "--workers '-1' is not a whole number >= 0", False),
    (["--amp", "maybe"], "--amp 'maybe' is not one of", False),
    (["--batch", "1"], "smaller than the 2 ranks", False),
    (["--batch", "3"], "not a multiple of the 2 ranks", False),
    (["--out", "{t}/notascan"], "not empty and not a yoloprof scan", False),
    (["--out", "{t}/afile"], "is a file", False),
    (["--out", "/proc/yoloprof-scan"], "cannot write there", False),  # unwritable even for root
    (["--nccl", "fastest"], "not a preset", False),
    (["--ranks", "0"], "--ranks '0' is not a whole number >= 1", False),
    (["--ranks", "1,4", "--nproc", "2"], "--ranks 4: the scan has 2 ranks (--nproc sets them)", False),
    (["--gpus", "0,1", "--ranks", "1,3"], "--ranks 3: the scan has 2 ranks (--gpus sets them)", True),
    (["--baseline", "lr0=0.01"], "not a setting yoloprof varies", False),
    (["--resume", "{t}/notascan"], "not a yoloprof scan folder", False),
    (["--resume", "{t}/notascan", "--batch", "8"], "drop --batch", False),
    (["--resume", "{t}/notascan", "--optimizer", "SGD"], "drop --optimizer", False),  # the saved plan's optimizer
    (["--optimizer", "Adagrad"], "Ultralytics has no optimizer 'Adagrad'; give one of Adam, Adamax, AdamW", False),
]


@pytest.mark.parametrize("args,words,gpu", TABLE, ids=[" ".join(a) for a, _, _ in TABLE])
def test_bad_input(args, words, gpu, cases, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env(GPUS if gpu else []))
    data = [] if "--resume" in args else ["--data", str(tiny_data)]
    argv = ["scan", *data, *[a.replace("{t}", str(cases)) for a in args]]
    before = sorted(Path(cases).rglob("*"))
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err
    assert sorted(Path(cases).rglob("*")) == before  # nothing half-written


def test_labels_are_looked_for_where_ultralytics_looks():
    from ultralytics.data.utils import img2label_paths

    images = [
        "/d/images/set/images/train/a.b.jpg",
        "/d/images/train/x.PNG",
        "/d/imagesets/train/y.jpg",
        "/d/images/img.images/z.jpeg",
        "/d/train/images.jpg",
    ]
    assert [str(datainfo._label_file(Path(i))) for i in images] == img2label_paths(images)


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True)
    out = [dst / p.name for p in sorted(src.glob("*.jpg"))[:n]]
    for p in out:
        p.write_bytes((src / p.name).read_bytes())
    return out


def test_no_train_labels_names_the_folder_but_background_images_are_fine(tmp_path, tiny_data):
    root = tmp_path / "images" / "2024"  # 'images' twice: Ultralytics swaps only the last one
    images = copy_images(tiny_data.parent / "images" / "train", root / "images" / "train", 3)
    data = tmp_path / "d.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [a]\n")
    with pytest.raises(UsageError) as err:
        datainfo.inspect(data)
    assert "none of the 3 train images has a label file (looked for" in str(err.value)
    fix = "put one .txt per image, named like it, in the labels/ folder"
    assert f" in {root / 'labels' / 'train'}); {fix}" in str(err.value)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / images[1].with_suffix(".txt").name).write_text("0 0.5 0.5 0.2 0.2\n")
    assert datainfo.inspect(data).train_images == 3  # two background images and one labelled: a dataset


def test_checkpoints_ultralytics_saves_are_accepted_whatever_their_classes(tmp_path):
    import torch
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel

    model = DetectionModel("yolo11n.yaml", nc=80, verbose=False)
    # as Ultralytics' trainer saves best.pt / last.pt: the half-precision EMA, no 'model'
    saved = {"epoch": 3, "model": None, "ema": model.half(), "updates": 10, "train_args": {"imgsz": 640}}
    torch.save(saved, tmp_path / "last.pt")
    torch.save({"model": DetectionModel("yolo11n.yaml", nc=2, verbose=False)}, tmp_path / "plain.pt")
    for name in ("last.pt", "plain.pt"):
        assert model_check.resolve(str(tmp_path / name), 3) == str((tmp_path / name).resolve())
    torch.save({"model": ClassificationModel("yolo11n-cls.yaml", nc=2, verbose=False)}, tmp_path / "cls.pt")
    assert model_check.resolve(str(tmp_path / "cls.pt"), 3) == str((tmp_path / "cls.pt").resolve())  # classify
    assert model_check.model_task(str(tmp_path / "cls.pt")) == "classify"


def test_a_legacy_yolov5_file_name_is_refused_before_ultralytics_would_download():
    folder = Path("/tmp") / f"yp-{os.getpid()}"  # Ultralytics renames yolov5s.pt only in a path without a 'u'
    folder.mkdir(exist_ok=True)
    try:
        (folder / "yolov5s.pt").write_bytes(b"never read")
        with pytest.raises(
            UsageError, match=r"its YOLOv5u release and would download it; rename the file \(e.g. yolov5s-mine"
        ):
            model_check.resolve(str(folder / "yolov5s.pt"), 3)
    finally:
        shutil.rmtree(folder)


def test_torch_blind_to_the_gpus_nvml_sees(tiny_data, monkeypatch, capsys):
    """An old driver under a new torch: one line with the driver, both CUDA versions and the install line,
    before anything else is checked (the bad model comes later); --device cpu goes on to the model."""
    from fake_nvml import patched

    blind = [
        "NVML sees 2 GPUs but torch 2.14.1 (built for CUDA 13.0) sees none: NVIDIA driver 535.104.05 runs CUDA "
        "up to 12.2",
        'make install TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu121"',
    ]
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env([]))
    for argv, words in (
        (["scan"], blind),
        (["probe", "compute"], blind),
        (["scan", "--device", "cpu"], ["not a model Ultralytics knows"]),
    ):
        with patched(count=2, driver="535.104.05", cuda=12020):
            code = cli.main([*argv, "--data", str(tiny_data), "--model", "yolo99z.yaml"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert all(w in lines[0] for w in words), (argv, err)
