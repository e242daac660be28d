"""Keep Ultralytics off the network inside a trial.

The launcher already sets YOLO_OFFLINE and friends; these patches cover what those variables do
not gate: the font check on every dataset check (a HEAD request) and in the plots' Annotator (the
epoch job times the run's end with plots), the AMP check (downloads a model on CUDA) and the
integration callbacks (analytics, platform, loggers).
"""

from __future__ import annotations

import re

# Ultralytics' own list of GPUs whose AMP gives NaN losses (ultralytics.utils.checks.check_amp).
_BAD_AMP_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)

AMP_CHECK_NOTE = (
    "AMP check: Ultralytics downloads yolo26n.pt to compare FP32 and AMP outputs; yoloprof never downloads, "
    "so it applies only Ultralytics' list of GPUs known to break AMP"
)


def check_amp_offline(model) -> bool:
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    return not _BAD_AMP_GPUS.search(torch.cuda.get_device_name(device))


def font_on_this_machine(font: str = "Arial.ttf"):
    """Ultralytics' check_font without its download (the epoch job's plots label images): the font where
    Ultralytics keeps it or where matplotlib knows one, else None, which makes the Annotator use PIL's own."""
    from pathlib import Path

    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    kept = USER_CONFIG_DIR / Path(font).name
    if kept.exists():
        return kept
    return next((f.fname for f in font_manager.fontManager.ttflist if font in f.fname), None)


def patch_ultralytics() -> None:
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.callbacks as callbacks_pkg
    import ultralytics.utils.plotting as plotting_mod

    data_utils.check_font = lambda *args, **kwargs: None
    plotting_mod.check_font = font_on_this_machine
    callbacks_pkg.add_integration_callbacks = lambda instance: None
    trainer_mod.check_amp = check_amp_offline
