"""Ultralytics' own check of a training config, so a bad key costs one line before any trial.

`yolo train cfg=` runs the same `ultralytics.cfg.get_cfg`: a key it rejects here would fail every
trial (and the user's own training), so the scan stops on it with Ultralytics' reason, in one line.
"""

from __future__ import annotations

import re

from yoloprof.errors import UsageError

_UNKNOWN = re.compile(r"'([^']+)' is not a valid YOLO argument\.(?: Similar arguments are i\.e\. \[([^\]]*)\]\.)?")


def check(args: dict, where: str) -> None:
    """Raise UsageError naming the first key Ultralytics rejects: unknown (SyntaxError), wrong type or range."""
    import ultralytics
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import LOGGER

    saved = LOGGER.level
    LOGGER.setLevel("ERROR")  # get_cfg logs its whole CLI help before raising on an unknown key
    try:
        get_cfg(overrides=dict(args))
    except SyntaxError as exc:
        found = _UNKNOWN.findall(str(exc))
        if not found:
            raise UsageError(f"{where}: {' '.join(str(exc).split())}") from None
        key, similar = found[0]
        near = [s.strip(" '\"").split("=")[0] for s in similar.split(",") if s.strip()]
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        more = f"; also {', '.join(repr(k) for k, _ in found[1:])}" if len(found) > 1 else ""
        raise UsageError(f"{where}: '{key}' is not an argument of Ultralytics {ultralytics.__version__}{hint}{more}; "
                         "remove or fix it") from None  # fmt: skip
    except (TypeError, ValueError) as exc:  # get_cfg's messages name the key: "'lr0=abc' is of invalid type str..."
        raise UsageError(f"{where}: {' '.join(str(exc).split())}") from None
    finally:
        LOGGER.setLevel(saved)
