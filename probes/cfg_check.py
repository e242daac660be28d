"""Ultralytics' own check of a training config, so a bad key costs one line before any trial.

`yolo train cfg=` runs the same `ultralytics.cfg.get_cfg`: a key it rejects here would fail every
trial (and the user's own training), so the scan stops on it with Ultralytics' reason, in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

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
        raise UsageError(
            f"{where}: '{key}' is not an argument of Ultralytics {ultralytics.__version__}{hint}{more}; "
            "remove or fix it"
        ) from None
    except (TypeError, ValueError) as exc:  # get_cfg's messages name the key: "'lr0=abc' is of invalid type str..."
        raise UsageError(f"{where}: {' '.join(str(exc).split())}") from None
    finally:
        LOGGER.setLevel(saved)


def read_yaml(path: str, where: str, hint: str, empty_ok: bool = False) -> tuple[Path, dict]:
    """A training config's arguments as YAML holds them (`--cfg` of a scan, `yoloprof train CFG`); a file
    that is missing or is no mapping of argument names is one UsageError line. `empty_ok`: an empty file
    is no arguments (the command line may give them all)."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{where}: {'is a folder' if p.is_dir() else 'no such file'}; {hint}")
    try:
        args = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{where}: cannot be read as YAML ({first})") from None
    if args is None and empty_ok:
        args = {}
    if not isinstance(args, dict) or not (args or empty_ok):
        what = "is empty" if args is None or args == {} else f"holds a {type(args).__name__}"
        raise UsageError(f"{where}: {what}, not a mapping of Ultralytics arguments (lines such as `batch: 16`)")
    bad = next((k for k in args if not isinstance(k, str)), None)
    if bad is not None:
        raise UsageError(f"{where}: key {bad!r} is not an argument name")
    return p, args
