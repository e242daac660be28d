"""`--cfg`: the training config the team already uses (what `yolo train cfg=` takes) as the scan's start.

A gain is only worth something measured on the run the user will make, so every key of their config
has one place in the scan:

- model, data, imgsz, optimizer (SCAN_SETS) are the scan's; a flag that says otherwise is an error,
  since only the user knows which one they meant;
- batch, workers, amp, cache, deterministic, compile, channels_last (MEASURED) are the "your settings"
  baseline trial (baselines.from_cfg);
- the keys in NOT_IN_TRIALS are left out of the trials, each for the reason given there;
- every other key (augmentation, lr, nbs, freeze, ...) holds in every trial, through
  TrialSpec.overrides (`held`), since it can change what a step costs.

best.yaml (reports/config_files.py) is the same config with only the measured settings changed.
Pure except `read`, which asks Ultralytics to check the keys (probes.cfg_check).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional


from yoloprof.analysis import optimizer as optim
from yoloprof.errors import UsageError
from yoloprof.records import OptimizerPlan
from yoloprof.search import knob_table
from yoloprof.search.space import show

SCAN_SETS = ("model", "data", "imgsz", "optimizer")
# a trial's knobs that a config holds (knob_table: carried by best.yaml); Ultralytics 8.4 has no pin_memory
# argument, and NCCL settings are environment variables
MEASURED = knob_table.IN_CONFIG

_PREDICTED = "; the epoch and cost predictions use it"
# Keys a throughput trial must not take from the user's config: the measurement sets them, or they
# do not change what a step costs and could break a trial. Each reason is shown to the user.
NOT_IN_TRIALS: dict[str, str] = {
    "task": "a trial trains a detection model",
    "mode": "a trial always trains",
    "device": "--gpus / --device choose the ranks",
    "epochs": "a trial runs a number of steps, not epochs" + _PREDICTED,
    "time": "a trial runs a number of steps, not hours",
    "patience": "early stopping needs validation, which a trial never runs",
    "close_mosaic": "a trial measures the steady state with mosaic on, close_mosaic=0" + _PREDICTED,
    "warmup_epochs": "a trial measures the steady state after warm-up, warmup_epochs=0" + _PREDICTED,
    "val": "a trial never validates" + _PREDICTED,
    "save": "a trial never saves a checkpoint" + _PREDICTED,
    "save_period": "a trial never saves a checkpoint",
    "save_json": "a trial never validates",
    "plots": "a trial draws no plots",
    "project": "a trial writes inside the scan folder",
    "name": "a trial writes inside the scan folder",
    "exist_ok": "a trial writes inside the scan folder",
    "save_dir": "a trial writes inside the scan folder",
    "resume": "a trial starts fresh",
    "pretrained": "initial weights do not change what a step costs, and loading them may need a download",
    "verbose": "a trial sets its own logging",
    "cfg": "a config named inside the config: put its arguments in this file",
}
_TASKS = (None, "detect", "segment", "pose", "obb", "classify")  # the worker trains each with its own trainer


def read(path: str) -> tuple[str, dict[str, Any]]:
    """(absolute path, its arguments in the user's order), every key checked by Ultralytics' get_cfg."""
    from yoloprof.probes import cfg_check

    where = f"--cfg {path}"
    p, args = cfg_check.read_yaml(
        path, where, "give your training config (a YAML file of Ultralytics arguments, what `yolo train cfg=` takes)"
    )
    cfg_check.check(args, where)
    if args.get("task") not in _TASKS:
        raise UsageError(f"{where}: task: {args['task']}; give one of {', '.join(t for t in _TASKS if t)}")
    return str(p.resolve()), args


def check_task(args: dict[str, Any], task: str, model: str, path: str) -> None:
    """The config's task is the model's: the model picks the trainer a trial runs."""
    if args.get("task") not in (None, task):
        raise UsageError(
            f"--cfg {path}: task: {args['task']}, but the model {model} is a {task} model; give a "
            f"{args['task']} model (model: in the config, or --model) or drop task:"
        )


def held(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments that hold in every trial: all but the scan's own, the knobs and NOT_IN_TRIALS."""
    return {k: v for k, v in args.items() if k not in SCAN_SETS + MEASURED and k not in NOT_IN_TRIALS}


def left_out(args: dict[str, Any]) -> dict[str, str]:
    """The user's keys a trial does not take, each with its reason."""
    return {k: NOT_IN_TRIALS[k] for k in args if k in NOT_IN_TRIALS}


def optimizer_flag(req) -> Optional[str]:
    """--optimizer when the user gave it (its default, auto, is not a choice the user made)."""
    given = any(a == "--optimizer" or a.startswith("--optimizer=") for a in req.command)
    return req.optimizer if given or not optim.is_auto(req.optimizer) else None


def apply(req, args: dict[str, Any], name: str, optimizer_given: Optional[str]) -> None:
    """The config's model, data and imgsz become the request's; a flag that contradicts it is an error."""
    flags = {"model": req.model, "data": req.data, "imgsz": req.imgsz, "optimizer": optimizer_given}
    for key, flag in flags.items():
        if key in args and flag is not None and not _same(key, flag, args[key]):
            raise UsageError(
                f"--{key} {flag} contradicts --cfg {name} ({key}: {args[key]}); drop --{key} or change the config"
            )
    if args.get("imgsz") is not None and (isinstance(args["imgsz"], bool) or not isinstance(args["imgsz"], int)):
        raise UsageError(
            f"--cfg {name}: imgsz: {args['imgsz']}; yoloprof scans one square training size, "
            "give one number (e.g. imgsz: 640)"
        )
    for key in ("model", "data", "imgsz"):
        if args.get(key) is not None and getattr(req, key) is None:
            setattr(req, key, args[key])


def _same(key: str, flag: Any, value: Any) -> bool:
    if key == "data":
        return Path(str(flag)).expanduser().resolve() == Path(str(value)).expanduser().resolve()
    if key == "optimizer":
        return str(flag).lower() == str(value).lower()
    return str(flag) == str(value)


def optimizer_asked(flag: Optional[str], args: dict[str, Any]) -> tuple[str, str]:
    """(the optimizer asked, where from): --optimizer, else the config's `optimizer:`, else Ultralytics' default,
    auto. UsageError for a name Ultralytics does not know (every trial would fail on it)."""
    if flag is not None:
        return optim.check_name(flag, f"--optimizer {flag}"), "--optimizer"
    if args.get("optimizer") is not None:
        return optim.check_name(str(args["optimizer"]), f"--cfg: optimizer: {args['optimizer']}"), "your config"
    return optim.AUTO, optim.DEFAULT_SOURCE


def optimizer_plan(
    flag: Optional[str], args: dict[str, Any], *, images: int, epochs: int, nbs: Optional[int] = None
) -> OptimizerPlan:
    """What the trials run (optimizer_asked), with the planned run that resolves auto per trial
    (yoloprof.analysis.optimizer): `images` the train split (cut here by the config's fraction, as Ultralytics
    cuts it), `epochs` and `nbs` the run plan's. A trial would otherwise get auto's pick for its own few steps,
    always AdamW."""
    asked, source = optimizer_asked(flag, args)
    return optim.plan(
        asked, images=optim.trained_images(images, args.get("fraction")), epochs=epochs, nbs=nbs, source=source
    )


def for_compute(specs: list, args: dict[str, Any], ranks: int) -> list:
    """The compute ceiling's trials with the held arguments; its nbs keeps a DDP trial's accumulation
    under the user's nbs (round(nbs / global batch) optimizer steps, as Ultralytics computes it)."""
    extra = held(args)
    if not extra:
        return specs
    out = []
    for s in specs:
        over = {**extra, **s.overrides}
        if "nbs" in extra:
            b = s.knobs.batch  # per rank: the compute ceiling runs one rank
            over["nbs"] = max(round(extra["nbs"] / (b * ranks)), 1) * b
        out.append(replace(s, overrides=over))
    return out


def summary(path: str, args: dict[str, Any], yours) -> list[str]:
    """What the scan took from the config, for the terminal: one fact a line."""
    took = [k for k in SCAN_SETS if k in args]
    knobs = ", ".join(
        [
            f"batch {yours.batch}",
            f"workers {yours.workers}",
            f"amp {show(yours.amp)}",
            f"cache {yours.cache}",
            *yours.extras(),
        ]
    )
    lines = [f"config: {path}" + (f": {', '.join(took)} from it" if took else "") + f"; your settings: {knobs}"]
    kept = held(args)
    if kept:
        lines.append(f"config: held in every trial: {', '.join(kept)}")
    if left_out(args):
        lines.append(f"config: not in trials: {', '.join(left_out(args))} (scan.json says why for each)")
    return lines


def deviation(args: dict[str, Any]) -> Optional[str]:
    """The config's keys trials leave out, each with why: for scan.json and the report's caveats."""
    out = left_out(args)
    if not out:
        return None
    return "From your --cfg, trials leave out " + "; ".join(f"{k} ({why})" for k, why in out.items()) + "."
