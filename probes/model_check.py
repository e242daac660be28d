"""Check the model before any trial: a model that cannot be built would fail every trial.

Weights are never downloaded: a `.pt` must be a local file; a name is built from its YAML. Every
Ultralytics task yoloprof measures (TASKS) is built with its own model class, as its trainer builds it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from yoloprof.errors import UsageError

PT_FIX = "give a checkpoint saved by Ultralytics (best.pt/last.pt) or build from YAML: --model yolo26n.yaml"
TASKS = ("detect", "segment", "pose", "obb", "classify")
# The model YAML a scan builds for each task when --model is not given (the data's task decides).
# YOLO26, Ultralytics' default family (`yolo train` without a model trains yolo26n.pt); YOLO11 and YOLOv8 are
# built the same way when named (--model yolo11n.yaml).
DEFAULT_MODELS = {
    "detect": "yolo26n.yaml",
    "segment": "yolo26n-seg.yaml",
    "pose": "yolo26n-pose.yaml",
    "obb": "yolo26n-obb.yaml",
    "classify": "yolo26n-cls.yaml",
}


def _model_class(task: str):
    """The model class and the head class it must end in: what the task's Ultralytics trainer builds."""
    from ultralytics.nn import modules
    from ultralytics.nn import tasks as t

    return {
        "detect": (t.DetectionModel, modules.Detect),
        "segment": (t.SegmentationModel, modules.Segment),
        "pose": (t.PoseModel, modules.Pose),
        "obb": (t.OBBModel, modules.OBB),
        "classify": (t.ClassificationModel, modules.Classify),
    }[task]


def cfg_task(cfg) -> str:
    """The task of a model YAML (a name Ultralytics knows, a path, or its dict), as YOLO(cfg) guesses it
    (the head's module name); raises FileNotFoundError for a name Ultralytics does not know."""
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    with _quiet("ERROR"):
        return guess_model_task(cfg if isinstance(cfg, dict) else yaml_model_load(cfg))


def _weights_task(weights) -> str:
    """A loaded checkpoint's task: its YAML's head (what its model class must be), else its `task` (its training
    args'; Ultralytics fills in 'detect' where a checkpoint saved none, whatever its head)."""
    cfg = getattr(weights, "yaml", None)
    return cfg_task(cfg) if isinstance(cfg, dict) else weights.task


def model_task(model: str) -> str:
    """The Ultralytics task of a model: a YAML's head, a .pt's own (see _weights_task). Loads a .pt."""
    p = Path(model).expanduser()
    if p.suffix != ".pt":
        return cfg_task(str(p.resolve()) if p.is_file() else model)
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.checks import check_yolov5u_filename

    if not p.is_file() or check_yolov5u_filename(str(p), verbose=False) != str(p):  # never a download
        raise FileNotFoundError(f"{model}: no local checkpoint of that name (check with resolve)")
    with _quiet("ERROR"):
        weights, _ = load_checkpoint(p)
    return _weights_task(weights)


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
    """Load a .pt the way a trial's trainer will (Ultralytics' setup_model): load_checkpoint, then
    the task's model from the checkpoint's YAML with the data's classes, then its weights.

    The model class is the checkpoint's task's (its YAML's head: _weights_task).
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
        raise UsageError(
            f"--model {model}: Ultralytics reads this name as its YOLOv5u release and would download it; "
            f"rename the file (e.g. {path.stem}-mine.pt)"
        )
    with _quiet("CRITICAL"):
        try:
            weights, _ = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - whatever the loader trips on, the file is the user's
            raise UsageError(f"--model {model}: {_unloadable(exc)}; {PT_FIX}") from None
        cfg = getattr(weights, "yaml", None)
        if not isinstance(cfg, dict):
            raise UsageError(
                f"--model {model}: its model carries no Ultralytics YAML, so Ultralytics cannot rebuild it; {PT_FIX}"
            )
        task = _weights_task(weights)
        try:
            _build(cfg, model, nc, task).load(weights, verbose=False)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild it is the checkpoint's
            raise UsageError(
                f"--model {model}: Ultralytics cannot build a {task} model from it ({_first_line(exc)}); {PT_FIX}"
            ) from None


def _build(cfg, model: str, nc: int, task: str):
    """The model the task's trainer builds. A YAML whose head is not its task's (a Classify head on a
    detection backbone read as detect, say) would fail every trial in the loss: refuse it here."""
    if task not in TASKS:
        raise UsageError(
            f"--model {model}: a {task} model; yoloprof measures {', '.join(TASKS[:-1])} and "
            f"{TASKS[-1]} training (e.g. yolo26n.yaml, yolo26n-seg.yaml)"
        )
    cls, head = _model_class(task)
    m = cls(cfg, nc=nc, verbose=False)
    if not isinstance(m.model[-1], head):
        raise UsageError(
            f"--model {model}: its last layer is {type(m.model[-1]).__name__}, not a {task} head "
            f"({head.__name__}); give a {task} model (e.g. {DEFAULT_MODELS[task]})"
        )
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
        raise UsageError(f"--model {model}: give a model YAML (e.g. yolo26n.yaml) or a local .pt file")
    cfg = str(p.resolve()) if p.is_file() else model
    try:
        with _quiet("WARNING"):  # "Overriding model.yaml nc=80 with nc=3" is noise here
            _build(cfg, model, nc, cfg_task(cfg))
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(
            f"--model {model}: not a file and not a model Ultralytics knows (e.g. yolo26n.yaml, yolo11s.yaml)"
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

    task = model_task(model)
    cfg = model
    if Path(model).suffix == ".pt":
        from ultralytics.nn.tasks import load_checkpoint

        cfg = load_checkpoint(model)[0].yaml
    with _quiet("WARNING"):
        m = _model_class(task)[0](cfg, nc=nc, verbose=False)  # pose: the YAML's kpt_shape, not the data's
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
