"""Check the model before any trial: a model that cannot be built would fail every trial.

Weights are never downloaded: a `.pt` must be a local file; a name is built from its YAML.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from yoloprof.errors import UsageError

PT_FIX = "give a checkpoint saved by Ultralytics (best.pt/last.pt) or build from YAML: --model yolo11n.yaml"


@contextmanager
def _quiet(level: str):
    """Ultralytics logs notes ("Overriding model.yaml nc=80 with nc=3") and warnings about the file
    before failing; the user gets our one line instead."""
    from ultralytics.utils import LOGGER

    saved = LOGGER.level
    LOGGER.setLevel(level)
    try:
        yield
    finally:
        LOGGER.setLevel(saved)


def _first_line(exc: BaseException) -> str:
    """The exception's first sentence: torch's zip reader appends a paragraph of advice to its one."""
    text = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", str(exc).strip())
    text = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Ultralytics' own loader errors (nn/tasks.py) -> what is wrong with the file, in our words
_LOADER_ERRORS = {
    "references types outside": "it holds no model under 'model' or 'ema', so it is not an Ultralytics checkpoint",
    "is a TorchScript archive": "it is a TorchScript export, not a training checkpoint",
    "YOLOv5 model originally trained": "it is an original YOLOv5 (ultralytics/yolov5) checkpoint, not loadable here",
}


def _unloadable(exc: Exception) -> str:
    """What is wrong with a .pt, from the way Ultralytics' loader failed on it."""
    text = str(exc)
    if isinstance(exc, AttributeError) and "has no attribute 'model'" in text and "'" in text:
        # torch_safe_load takes a non-dict for a pickled model and asks it for .model
        return f"it holds a pickled {text.split(chr(39))[1]}, not an Ultralytics checkpoint"
    known = next((why for words, why in _LOADER_ERRORS.items() if words in text), None)
    if known:
        return known
    if isinstance(exc, ModuleNotFoundError) and exc.name:  # never installed: YOLO_AUTOINSTALL=0
        return f"it needs the Python module '{exc.name}', which is not installed here"
    cause = exc.__cause__ if isinstance(exc, TypeError) and exc.__cause__ is not None else exc
    return f"it is not a readable PyTorch checkpoint ({_first_line(cause)})"


def check_checkpoint(path: Path, model: str, nc: int) -> None:
    """Load a .pt the way a trial's trainer will (Ultralytics' setup_model): load_checkpoint, then a
    DetectionModel from the checkpoint's YAML with the data's classes, then its weights.

    Loading unpickles the file (weights_only=False, as Ultralytics does), which is what every trial
    would do with the same file anyway. Nothing is fetched: the path is local, and scan.prepare has
    set YOLO_OFFLINE and YOLO_AUTOINSTALL=0 before Ultralytics was imported, so a checkpoint that
    names a missing module fails instead of installing it.
    """
    if path.stat().st_size == 0:
        raise UsageError(f"--model {model}: the file is empty; {PT_FIX}")
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.checks import check_yolov5u_filename

    if check_yolov5u_filename(str(path), verbose=False) != str(path):
        raise UsageError(f"--model {model}: Ultralytics reads this name as its YOLOv5u release and would download it; "
                         f"rename the file (e.g. {path.stem}-mine.pt)")  # fmt: skip
    with _quiet("CRITICAL"):
        try:
            weights, _ = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - whatever the loader trips on, the file is the user's
            raise UsageError(f"--model {model}: {_unloadable(exc)}; {PT_FIX}") from None
        cfg = getattr(weights, "yaml", None)
        if not isinstance(cfg, dict):
            raise UsageError(f"--model {model}: its model carries no Ultralytics YAML, so Ultralytics cannot rebuild "
                             f"it; {PT_FIX}")  # fmt: skip
        try:
            _detector(cfg, model, nc).load(weights, verbose=False)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild it is the checkpoint's
            raise UsageError(f"--model {model}: Ultralytics cannot build a detection model from it "
                             f"({_first_line(exc)}); {PT_FIX}") from None  # fmt: skip


def _detector(cfg, model: str, nc: int):
    """The DetectionModel a trial's trainer builds. A classifier's YAML builds one too, with a
    Classify head, and then every trial fails in the detection loss: refuse it here."""
    from ultralytics.nn.modules import Detect
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel(cfg, nc=nc, verbose=False)
    if not isinstance(m.model[-1], Detect):
        raise UsageError(f"--model {model}: its last layer is {type(m.model[-1]).__name__}, not a detection head; "
                         "yoloprof measures detection training: give a detection model (e.g. yolo11n.yaml)")  # fmt: skip
    return m


def resolve(model: str, nc: int) -> str:
    """The model argument to hand to Ultralytics (a YAML name or an absolute file path)."""
    p = Path(model).expanduser()
    if p.suffix == ".pt":
        if not p.is_file():
            raise UsageError(
                f"--model {model}: no such weights file, and yoloprof never downloads; "
                f"give a local .pt or build from YAML, e.g. --model {p.stem}.yaml"
            )
        check_checkpoint(p.resolve(), model, nc)
        return str(p.resolve())
    if p.suffix not in (".yaml", ".yml"):
        raise UsageError(f"--model {model}: give a model YAML (e.g. yolo11n.yaml) or a local .pt file")
    cfg = str(p.resolve()) if p.is_file() else model
    try:
        with _quiet("WARNING"):  # "Overriding model.yaml nc=80 with nc=3" is noise here
            _detector(cfg, model, nc)
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(
            f"--model {model}: not a file and not a model Ultralytics knows (e.g. yolo11n.yaml, yolov8s.yaml)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to build the model is the user's YAML
        raise UsageError(f"--model {model}: Ultralytics cannot build it ({_first_line(exc)})") from None
    return cfg


def ddp_bucket_sizes(model: str, nc: int, bucket_cap_mb: float = 25.0) -> list[int]:
    """The gradient bucket sizes (bytes) DDP builds for this model with Ultralytics' DDP settings.

    Uses DDP's own assignment (find_unused_parameters=True keeps this initial bucketing for the
    whole run): a small first bucket, then buckets of up to 25 MiB, in DDP's bucket index order.
    The scan measures the real sizes in every trial; this serves the standalone link probe.
    """
    import torch.distributed as dist
    from ultralytics.nn.tasks import DetectionModel

    with _quiet("WARNING"):
        m = DetectionModel(model, nc=nc, verbose=False)
    params, seen = [], set()
    for name, p in m.named_parameters():
        p.requires_grad_(".dfl" not in name)  # Ultralytics always freezes the DFL layer
    for mod in m.modules():
        for p in mod.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    limits = [dist._DEFAULT_FIRST_BUCKET_BYTES, int(bucket_cap_mb * 2**20)]
    buckets, _ = dist._compute_bucket_assignment_by_size(params, limits, [False] * len(params))
    return [sum(params[i].numel() * params[i].element_size() for i in b) for b in reversed(buckets)]
