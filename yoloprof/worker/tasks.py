"""Which trainer a trial runs: the model's Ultralytics task picks it, as `YOLO(model).train()` does.

The task is the model's own (a YAML's head, a .pt's training args: probes.model_check.model_task);
each task's trial trainer is ScanMixin mixed into that task's Ultralytics trainer, one class per task.
Segment, pose and obb trainers are DetectionTrainer subclasses; classify's is a BaseTrainer of its own
(its own dataloader module, batches of images and class ids, no /255 in preprocess_batch: the dataset's
transforms normalise).
"""

from __future__ import annotations

from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer

from yoloprof.probes.model_check import TASKS, model_task  # noqa: F401 - the worker's way to a model's task
from yoloprof.worker.trainer import ScanMixin, ScanTrainer


class ScanSegmentationTrainer(ScanMixin, SegmentationTrainer):
    """segment's trial trainer."""


class ScanPoseTrainer(ScanMixin, PoseTrainer):
    """pose's trial trainer (the data's kpt_shape builds the head, as in training)."""


class ScanOBBTrainer(ScanMixin, OBBTrainer):
    """obb's trial trainer."""


class ScanClassificationTrainer(ScanMixin, ClassificationTrainer):
    """classify's trial trainer."""


TRAINERS = {
    "detect": ScanTrainer,
    "segment": ScanSegmentationTrainer,
    "pose": ScanPoseTrainer,
    "obb": ScanOBBTrainer,
    "classify": ScanClassificationTrainer,
}


def scan_trainer(task: str) -> type:
    """The trial trainer class for an Ultralytics task."""
    try:
        return TRAINERS[task]
    except KeyError:
        raise ValueError(f"task {task!r}: yoloprof measures {', '.join(TASKS)} training") from None


def trainer_for(model: str) -> type:
    """The trial trainer class for a model (a YAML name or path, or a .pt)."""
    return scan_trainer(model_task(model))
