"""One rank of `yoloprof train`: `python -m torch.distributed.run ... -m yoloprof.worker.train_rank CFG [k=v ...]`.

Ultralytics' own training, as `yolo train cfg=CFG k=v ...` runs it (the same arguments, the model's
own task trainer, validation, checkpoints, logging, resume), with only what a torchrun world of one
or several nodes needs (`NodeTrainerMixin`), and nothing downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from yoloprof.errors import UsageError
from yoloprof.worker import ddp, run_watch
from yoloprof.worker.train_args import train_args


def _local_font(font="Arial.ttf"):
    """Ultralytics' check_font without its download: the font in its config folder or matplotlib's list,
    else None (the plots then use PIL's default font)."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    if (USER_CONFIG_DIR / name).exists():
        return USER_CONFIG_DIR / name
    return next(
        (f.fname for f in font_manager.fontManager.ttflist if font in f.fname and os.path.exists(f.fname)), None
    )


def keep_offline() -> None:
    """What YOLO_OFFLINE does not gate: the font check (a HEAD request on every dataset check and plot)
    and the AMP check (a model download on CUDA; decided from Ultralytics' own list instead)."""
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.plotting as plotting

    from yoloprof.probes.offline import check_amp_offline

    data_utils.check_font = plotting.check_font = _local_font
    trainer_mod.check_amp = check_amp_offline


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class NodeTrainerMixin(ddp.DDPFixMixin):
    """What `yolo train` needs to run as one rank of a world spanning one node or several.

    Besides DDPFixMixin's world size, device and CPU fixes: the process group starts with the trainer
    (Ultralytics' barriers around dataset checks then hold), global rank 0 picks the run folder and
    every rank uses it (as Ultralytics' own DDP launcher passes save_dir; otherwise a rank > 0 would
    take project/name without the increment and delete that folder's results.csv), rank 0 builds
    first, and the final validation of best.pt runs on every rank even where a node's disk lacks it.
    """

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        from ultralytics.cfg import cfg2dict, get_cfg, get_save_dir
        from ultralytics.utils import DEFAULT_CFG
        from ultralytics.utils.torch_utils import parse_device

        cfg = DEFAULT_CFG if cfg is None else cfg
        world = ddp.World.from_env()
        if not world.distributed:
            super().__init__(cfg, overrides, _callbacks)
            return
        args = get_cfg(cfg, overrides)
        device = ddp.device_for(parse_device(args.device), world.local_rank)
        ddp.init(device)
        if world.writer:
            nodes = os.environ.get(ddp.NNODES_ENV, "1")
            print(
                f"yoloprof train: a world of {world.size} ranks on {nodes} node(s), {world.local_size} per node, "
                f"{ddp.backend(device)}; global rank 0 (this one, {device}) writes the run folder",
                flush=True,
            )
        if not args.resume:  # a resumed run's folder comes from its checkpoint, the same on every rank
            save_dir = ddp.broadcast_object(str(get_save_dir(args)) if world.writer else None)
            cfg, overrides = {**cfg2dict(cfg), "save_dir": ""}, {**(overrides or {}), "save_dir": save_dir}
        with _writer_first(world):
            super().__init__(cfg, overrides, _callbacks)

    def final_eval(self):
        world = ddp.World.from_env()
        if not world.distributed:
            return super().final_eval()
        with self._best_on_this_node(world):
            return super().final_eval()

    @contextlib.contextmanager
    def _best_on_this_node(self, world: ddp.World):
        """Every rank validates best.pt (rank 0 gathers their shards): a rank whose disk has no copy of rank
        0's best.pt (another node, no shared storage) gets it from rank 0 into a temporary folder."""
        import torch.distributed as dist

        want = ddp.broadcast_object(_digest(self.best) if world.writer else None)
        mine = _digest(self.best)
        need = want is not None and mine != want
        needs = [None] * world.size
        dist.all_gather_object(needs, need)
        saved, tmp = self.best, None
        if any(needs):
            data = ddp.broadcast_object(self.best.read_bytes() if world.writer else None)
            if need:
                tmp = Path(tempfile.mkdtemp(prefix="yoloprof-best-"))
                self.best = tmp / self.best.name
                self.best.write_bytes(data)
        if want is None and mine is not None:  # a stale best.pt here: rank 0 has none, so none is validated
            self.best = self.wdir / ".no-best-on-rank-0.pt"
        try:
            yield
        finally:
            self.best = saved
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _writer_first(world: ddp.World):
    """Rank 0 builds its trainer (run folder, args.yaml, dataset check) before the others start theirs."""
    import torch.distributed as dist

    if not world.writer:
        dist.barrier()
    yield
    if world.writer:
        dist.barrier()


def trainer_for(base: type) -> type:
    """The task trainer Ultralytics would use, with the fixes first in its method order."""
    return type(f"Node{base.__name__}", (NodeTrainerMixin, base), {"__module__": __name__})


def train(cfg: str, pairs: list[str]) -> None:
    """`yolo train cfg=CFG k=v ...` (ultralytics.cfg.entrypoint), with our trainer class."""
    args = train_args(cfg, pairs)
    keep_offline()
    task = args.pop("task", None)
    model_name = args.pop("model", None) or args["resume"]  # no model: resume=path/last.pt (train_args checked)
    if "rtdetr" in Path(str(model_name)).stem.lower():
        from ultralytics import RTDETR

        model = RTDETR(model_name)
    else:
        from ultralytics import YOLO

        model = YOLO(model_name, task=task)
    args["model"] = model_name
    if os.environ.get(run_watch.ENV) == "1":  # yoloprof train: the run's records, a line per epoch and rank
        run_watch.watch(model)
    model.train(trainer=trainer_for(model._smart_load("trainer")), **args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank = ddp.follow_node_rank()  # before ultralytics is imported: it reads RANK once
    if rank is not None:
        ddp.claim_rank(rank)
    from yoloprof.orphan_guard import die_with_parent

    die_with_parent()  # with torchrun: nothing of a rank outlives its node's launcher
    try:
        train(argv[0], argv[1:])
    except UsageError as exc:
        print(f"yoloprof train: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _exit_now(code: int) -> None:
    """Exit as Python would (atexit handlers: loggers flush; streams flushed) without tearing down every
    module's objects one by one, which took about 2.4 s of each launch on a 2-core machine."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
