"""YOLO26, the default family: its end-to-end heads against what yoloprof's worker and probes assume.

A YOLO26 detection head (Detect, Segment26, Pose26, OBB26 with `end2end: True`, `reg_max: 1`) trains two
branches: one-to-many on the features, one-to-one on detached features, both scored by E2ELoss, whose
branch weights Ultralytics moves at each epoch end. Checked here, on real batches of each task's
synthetic data and the tiny YOLO26 fixtures (tests/fixtures/tiny26-*.yaml), and on yolo26n itself:
- every parameter gets a gradient (none is frozen or left unused), the one-to-one head's from its own loss only;
- the first layer's weight gets its gradient last (the probe's grad_end mark);
- a step leaves the batch's tensors as they were (the compute probe replays one batch for every step);
- the model's DDP buckets are the ones the link probe sends (probes.model_check.ddp_bucket_sizes);
- the epoch job's epoch end moves E2ELoss's branch weights as `_do_train` does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import FIXTURES
from yoloprof.data.dataset import SyntheticSpec, generate

TASKS = ("detect", "segment", "pose", "obb", "classify")
HEADS = {"detect": "Detect", "segment": "Segment26", "pose": "Pose26", "obb": "OBB26", "classify": "Classify"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """{task: data=}: 8 training images at 160x120 per task."""
    root = tmp_path_factory.mktemp("y26-data")
    return {
        t: generate(root / t, SyntheticSpec(images=8, width=160, height=120, val_images=2, seed=3, task=t))
        for t in TASKS
    }


def real_batch(task: str, data_path, n: int = 4) -> dict:
    """n training images of the task's data through Ultralytics' own dataset, collate and preprocess_batch."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import ClassificationDataset, build_yolo_dataset
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset

    cfg = get_cfg(overrides=dict(task=task, imgsz=64, data=str(data_path)))
    if task == "classify":
        d = check_cls_dataset(str(data_path))
        ds = ClassificationDataset(str(d["train"]), cfg, augment=True, prefix="train", names=d["names"])
        items = [ds[i] for i in range(n)]
        return {"img": torch.stack([x["img"] for x in items]), "cls": torch.tensor([x["cls"] for x in items])}
    d = check_det_dataset(str(data_path))
    ds = build_yolo_dataset(cfg, d["train"], n, d, mode="train", stride=32)
    batch = ds.collate_fn([ds[i] for i in range(n)])
    batch["img"] = batch["img"].float() / 255  # DetectionTrainer.preprocess_batch
    return batch


def train_model(model: str, task: str, nc: int, **args):
    """The task's model as its trainer builds it, with the args its loss reads, in training mode."""
    from ultralytics.cfg import get_cfg

    from yoloprof.probes import model_check

    m = model_check._model_class(task)[0](model, nc=nc, verbose=False)
    m.args = get_cfg(overrides=dict(task=task, **args))
    for name, p in m.named_parameters():
        p.requires_grad_(".dfl" not in name)  # as Ultralytics' trainer freezes
    return m.train()


@pytest.mark.parametrize("task", TASKS)
def test_a_yolo26_step_trains_every_parameter_and_the_first_layer_last(task, data):
    from yoloprof.probes import model_check

    model = str(FIXTURES / f"tiny26-{task}.yaml")
    assert model_check.model_task(model) == task
    nc = 3  # the synthetic data's three shapes, every task
    m = train_model(model, task, nc)
    head = m.model[-1]
    assert type(head).__name__ == HEADS[task]
    if task != "classify":  # both branches built; no DFL (reg_max 1), so nothing frozen
        assert head.reg_max == 1 and head.one2one_cv2 is not None and head.stride.tolist() == [8.0]
    order = []
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    for n, p in params:
        p.register_post_accumulate_grad_hook(lambda p, n=n: order.append(n))
    batch = real_batch(task, data[task])
    before = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    loss, items = m(dict(batch))
    assert type(m.criterion).__name__ == ("v8ClassificationLoss" if task == "classify" else "E2ELoss")
    loss.sum().backward()
    assert len(order) == len(params) == len(list(m.parameters()))  # no unused parameter, none frozen
    assert order[-1] == params[0][0] == "model.0.conv.weight"  # grad_end: the first layer's gradient comes last
    assert all(torch.equal(before[k], batch[k]) for k in before), "the loss changed the batch in place"
    assert torch.isfinite(loss).all() and set(items) >= ({"loss"} if task == "classify" else {"box_loss", "cls_loss"})


def test_the_one_to_one_branch_trains_only_its_own_head(data):
    """The one-to-one branch reads detached features: its loss alone gives no gradient outside its own layers, so
    the backbone's gradients (the first layer's, grad_end) come from the one-to-many branch alone."""
    m = train_model(str(FIXTURES / "tiny26-detect.yaml"), "detect", 3)
    batch = real_batch("detect", data["detect"], n=2)
    m(dict(batch))  # builds the criterion
    preds = m.criterion.one2many.parse_output(m(batch["img"]))  # {"one2many": ..., "one2one": ...}
    m.criterion.one2one.loss(preds["one2one"], batch)[0].sum().backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad and {n.split(".")[2] for n in with_grad} == {"one2one_cv2", "one2one_cv3"}


@pytest.mark.parametrize("model", ["yolo26n.yaml", str(FIXTURES / "tiny26-pose.yaml")])
def test_the_link_probe_sends_the_buckets_ddp_reduces(model, data):
    """ddp_bucket_sizes (the link probe's bucket sizes before any trial ran) against a real DDP reducer: one
    gloo rank in this process, Ultralytics' find_unused_parameters=True, the bucket sizes of two steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from yoloprof.probes import model_check

    task = model_check.model_task(model)
    nc = 3  # the synthetic data's three shapes, every task
    want = model_check.ddp_bucket_sizes(model, nc)
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        m = train_model(model, task, nc)
        ddp = DistributedDataParallel(m, find_unused_parameters=True)
        seen = []

        def hook(state, bucket):
            seen.append((bucket.index(), bucket.buffer().numel() * bucket.buffer().element_size()))
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, hook)
        steps = []
        for _ in range(2):
            seen.clear()
            loss, _ = ddp(real_batch(task, data[task], n=2))
            loss.sum().backward()
            steps.append([size for _, size in sorted(seen)])
    finally:
        dist.destroy_process_group()
    assert steps == [want, want] and len(want) == (2 if model == "yolo26n.yaml" else 1)
    assert sum(want) == sum(p.numel() * 4 for p in m.parameters())  # every parameter, the one-to-one head's too


def test_the_epoch_end_moves_the_e2e_loss_weights_as_ultralytics_does(data):
    """EpochEndMixin._end_before_val is `_do_train`'s criterion.update(): after k epoch ends E2ELoss weighs the
    one-to-many branch 0.8 - k/(epochs-1) * 0.7 (its decay toward 0.1)."""
    from ultralytics.utils.torch_utils import ModelEMA

    from yoloprof.worker.epoch_end import EpochEndMixin

    m = train_model(str(FIXTURES / "tiny26-detect.yaml"), "detect", 3, epochs=8)
    m(real_batch("detect", data["detect"], n=2))  # the criterion is built on the first loss
    called = []
    t = SimpleNamespace(
        model=m, optimizer=SimpleNamespace(param_groups=[{"lr": 0.01}]), ema=ModelEMA(m), run_callbacks=called.append
    )
    assert (m.criterion.o2m, m.criterion.o2o) == (0.8, pytest.approx(0.2))
    for k in (1, 2):
        EpochEndMixin._end_before_val(t)
        o2m = 0.8 - k / 7 * 0.7
        assert (m.criterion.o2m, m.criterion.o2o) == (pytest.approx(o2m), pytest.approx(1 - o2m))
    assert called == ["on_train_epoch_end"] * 2 and t.lr == {"lr/pg0": 0.01}
