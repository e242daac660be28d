"""The arguments of `yoloprof train CFG k=v ...`, read as `yolo train cfg=CFG k=v ...` reads them.

Light on purpose (ultralytics is imported only once the config file is known to exist): the
launcher checks its input with it before starting anything, and every rank builds its arguments
with it, so the two never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloprof.errors import UsageError


def train_args(cfg: str, pairs: list[str]) -> dict[str, Any]:
    """The arguments `yolo train cfg=CFG k=v ...` hands `Model.train`: the YAML's, then each k=v (the
    command line wins), parsed by Ultralytics' own functions and checked by its get_cfg. UsageError
    (one line) for input Ultralytics would reject."""
    from yoloprof.probes import cfg_check

    _, loaded = cfg_check.read_yaml(
        cfg,
        f"CFG {cfg}",
        "give a training config (what `yolo train cfg=` takes, e.g. a scan's best.yaml)",
        empty_ok=True,
    )
    from ultralytics.cfg import DEFAULT_CFG_DICT, TASKS, merge_equals_args, parse_key_value_pair

    args = {k: v for k, v in loaded.items() if k != "cfg"}
    for a in merge_equals_args(list(pairs)):
        if "=" in a:
            key = a.split("=", 1)[0].strip()
            try:
                key, value = parse_key_value_pair(a)
            except (NameError, SyntaxError, ValueError, AssertionError):
                raise UsageError(f"{a}: give key=value with a value, e.g. epochs=100") from None
            if key == "cfg":
                raise UsageError(f"{a}: give the config as CFG, the first argument of `yoloprof train`")
            args[key] = value
        elif a in TASKS:
            args["task"] = a
        elif a in DEFAULT_CFG_DICT and isinstance(DEFAULT_CFG_DICT[a], bool):
            args[a] = True  # as `yolo train resume` takes a bare boolean argument
        else:
            raise UsageError(
                f"{a}: give Ultralytics arguments as key=value (e.g. epochs=100), or a flag of "
                "`yoloprof train` (see --help)"
            )
    args.pop("mode", None)  # always train
    cfg_check.check(args, f"yoloprof train {cfg}")
    if not isinstance(args.get("resume"), str):  # resume=path/last.pt: the checkpoint names model and data
        _check_local(args)
    return args


def _check_local(args: dict[str, Any]) -> None:
    """Where `yolo train` would download (no model: yolo26n.pt; no data: the task's sample dataset; a .pt
    that is not here), nothing is downloaded: say so before any rank starts."""
    from ultralytics.utils import SETTINGS

    model = args.get("model")
    if not model:
        raise UsageError(
            "no model: give model= in CFG or as model=... (a model YAML such as yolo26n.yaml, or a local "
            ".pt); `yolo train` would download yolo26n.pt, and nothing is downloaded here"
        )
    m = Path(str(model)).expanduser()
    if m.suffix == ".pt" and not m.is_file() and not (Path(SETTINGS["weights_dir"]) / m.name).is_file():
        raise UsageError(
            f"model={model}: no such file, and nothing is downloaded; give a local .pt or a model YAML "
            "(e.g. yolo26n.yaml, built without weights)"
        )
    if args.get("data") is None and not args.get("resume"):
        raise UsageError(
            "no data: give data= in CFG or as data=... (your dataset's yaml); `yolo train` would "
            "download a sample dataset, and nothing is downloaded here"
        )
