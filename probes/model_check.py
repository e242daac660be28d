"""Check the model before any trial: a model that cannot be built would fail every trial.

Weights are never downloaded: a `.pt` must be a local file; a name is built from its YAML.
"""

from __future__ import annotations

from pathlib import Path

from yoloprof.errors import UsageError


def resolve(model: str, nc: int) -> str:
    """The model argument to hand to Ultralytics (a YAML name or an absolute file path)."""
    p = Path(model).expanduser()
    if p.suffix == ".pt":
        if not p.is_file():
            raise UsageError(
                f"--model {model}: no such weights file, and yoloprof never downloads; "
                f"give a local .pt or build from YAML, e.g. --model {p.stem}.yaml"
            )
        return str(p.resolve())
    if p.suffix not in (".yaml", ".yml"):
        raise UsageError(f"--model {model}: give a model YAML (e.g. yolo11n.yaml) or a local .pt file")
    cfg = str(p.resolve()) if p.is_file() else model
    try:
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils import LOGGER

        level = LOGGER.level
        LOGGER.setLevel("WARNING")  # "Overriding model.yaml nc=80 with nc=3" is noise here
        try:
            DetectionModel(cfg, nc=nc, verbose=False)
        finally:
            LOGGER.setLevel(level)
    except FileNotFoundError:
        raise UsageError(
            f"--model {model}: not a file and not a model Ultralytics knows (e.g. yolo11n.yaml, yolov8s.yaml)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to build the model is the user's YAML
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--model {model}: Ultralytics cannot build it ({type(exc).__name__}: {line[:160]})") from None
    return cfg


def ddp_bucket_sizes(model: str, nc: int, bucket_cap_mb: float = 25.0) -> list[int]:
    """The gradient bucket sizes (bytes) DDP builds for this model with Ultralytics' DDP settings.

    Uses DDP's own assignment (find_unused_parameters=True keeps this initial bucketing for the
    whole run): a small first bucket, then buckets of up to 25 MiB, in DDP's bucket index order.
    The scan measures the real sizes in every trial; this serves the standalone link probe.
    """
    import torch.distributed as dist
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel("WARNING")
    try:
        m = DetectionModel(model, nc=nc, verbose=False)
    finally:
        LOGGER.setLevel(level)
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
