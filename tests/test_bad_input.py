"""Every input mistake: one line on stderr naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes import environment
from yoloprof import cli
from yoloprof.records import Environment, GpuInfo

GPUS = [GpuInfo(0, "NVIDIA H100", 81559.0), GpuInfo(1, "NVIDIA H100", 81559.0)]


def fake_env(gpus):
    return Environment("h", "linux", "3.11", 16, 64000.0, "2.14.1", "8.4.190", "13.0", "2.30", None, gpus,
                       ["batch", "workers"], {})  # fmt: skip


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
