"""The knobs a scan tunes, in one table: each one's flag and help, how its values parse, what an auto search
tries, what is left when the hardware rules every value out, and how best.yaml or best.env carries it.

The parser (flags.py), the request (scan/request.py), the grid plan and the auto space, your settings
(--baseline, --cfg), results.csv and best.yaml read this table; records.Knobs holds one trial's values.
Adding a knob: a row here, a field of records.Knobs and plan.Axes and scan.request.ScanRequest (of the same
name; tests/test_knob_table.py checks they agree), and what it changes in the worker (worker/trainer.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from yoloprof.errors import UsageError

# Named NCCL settings. NCCL files most of these under debugging variables: a recommendation that
# sets one says so and shows the gain it measured. LL128 is left out on purpose (it can corrupt
# data where unsupported).
NCCL_PRESETS: dict[str, dict[str, str]] = {
    "default": {},
    "ring": {"NCCL_ALGO": "Ring"},
    "tree": {"NCCL_ALGO": "Tree"},
    "simple": {"NCCL_PROTO": "Simple"},
    "no-p2p": {"NCCL_P2P_DISABLE": "1"},
    "no-shm": {"NCCL_SHM_DISABLE": "1"},
    "buff8m": {"NCCL_BUFFSIZE": str(8 * 2**20)},
}
_CUSTOM_NCCL = re.compile(r"^NCCL_[A-Z0-9_]+=[^+=\s]+(\+NCCL_[A-Z0-9_]+=[^+=\s]+)*$")

_BOOL = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_AMP = {
    **_BOOL,
    "fp16": True,
    "fp32": False,
    "bf16": "bf16",
}  # Ultralytics' amp takes True/'fp16', 'bf16', False/'fp32'
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
_COMPILE = {**{m: m for m in COMPILE_MODES}, "on": "default", "true": "default", "false": "off"}
_CACHE = {"off": "off", "false": "off", "none": "off", "ram": "ram", "true": "ram", "disk": "disk"}


def _items(flag: str, text: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
        raise UsageError(f"{flag} '{text}' has an empty value; give a comma list such as {flag} 8,16")
    if len(set(items)) != len(items):
        raise UsageError(f"{flag} '{text}' repeats a value; list each value once")
    return items


def parse_ints(flag: str, text: str, minimum: int) -> list[int]:
    out = []
    for item in _items(flag, text):
        if not re.fullmatch(r"[+-]?\d+", item) or int(item) < minimum:
            raise UsageError(
                f"{flag} '{item}' is not a whole number >= {minimum}; e.g. {flag} {max(minimum, 1)},{max(minimum, 1) * 2}"
            )
        out.append(int(item))
    return out


def parse_choices(flag: str, text: str, table: dict) -> list:
    out = []
    for item in _items(flag, text):
        if item.lower() not in table:
            raise UsageError(f"{flag} '{item}' is not one of {', '.join(sorted(set(table)))}")
        value = table[item.lower()]
        if value in out:
            raise UsageError(f"{flag} '{text}' names the same setting twice")
        out.append(value)
    return out


def parse_amp(text: str) -> list:
    return parse_choices("--amp", text, _AMP)


def parse_compile(text: str) -> list[str]:
    return parse_choices("--compile", text, _COMPILE)


def parse_nccl(text: str) -> list[str]:
    out = []
    for item in _items("--nccl", text):
        if item not in NCCL_PRESETS and not _CUSTOM_NCCL.match(item):
            raise UsageError(
                f"--nccl '{item}' is not a preset ({', '.join(NCCL_PRESETS)}) nor NCCL_NAME=value[+NCCL_NAME=value]"
            )
        out.append(item)
    return out


@dataclass(frozen=True)
class Knob:
    name: str  # the field of records.Knobs, plan.Axes and ScanRequest; results.csv's column; a --baseline key
    example: str  # --help: "comma list, e.g. <example>"
    parse: Callable[[str, str], list]  # (flag, comma list) -> values; a bad value: UsageError, one line
    auto: Optional[tuple]  # what --strategy auto tries (space.py drops what the hardware cannot use); None: sized
    # by the hardware (space.batch_values)
    fallback: Any  # the value a trial runs when the hardware rules out every listed one; None: never all ruled out
    carrier: Literal["yaml", "env"]  # best.yaml (an Ultralytics argument) or best.env (a variable)
    to_cfg: Callable[[Any], Any] = lambda v: v  # the value as Ultralytics takes it; None: left out (its auto)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_one(self, text: str) -> Any:
        """One value, as --baseline and --cfg name it ("amp=off")."""
        (value,) = self.parse(self.flag, text)
        return value


def _ints(minimum: int) -> Callable[[str, str], list]:
    return lambda flag, text: parse_ints(flag, text, minimum)


def _choices(table: dict) -> Callable[[str, str], list]:
    return lambda flag, text: parse_choices(flag, text, table)


WORKERS = (0, 1, 2, 4, 8, 16)
AUTO_NCCL = ("default", "ring", "tree", "simple", "no-shm", "buff8m")  # no-p2p: debug-only, never auto
# compile's other modes autotune for many minutes; auto tries the default mode (GPUs only), a user asks for more
AUTO_COMPILE = ("off", "default")

KNOBS: tuple[Knob, ...] = (
    Knob("batch", "16,32 (global, all ranks)", _ints(1), None, None, "yaml"),
    Knob("workers", "2,8 (per rank)", _ints(0), WORKERS, None, "yaml"),
    Knob("amp", "on,off,bf16", _choices(_AMP), (True, False, "bf16"), False, "yaml"),
    Knob("pin_memory", "on,off", _choices(_BOOL), (True, False), False, "env"),
    Knob(
        "cache",
        "off,ram,disk",
        _choices(_CACHE),
        ("off", "disk", "ram"),
        None,
        "yaml",
        lambda v: {"off": False, "ram": "ram", "disk": "disk"}[v],
    ),
    Knob("nccl", "default,ring,tree", lambda flag, text: parse_nccl(text), AUTO_NCCL, "default", "env"),
    Knob("deterministic", "on,off (off gives up bit-reproducible runs)", _choices(_BOOL), (True, False), None, "yaml"),
    Knob(
        "compile",
        "off,default,reduce-overhead,max-autotune-no-cudagraphs",
        _choices(_COMPILE),
        AUTO_COMPILE,
        "off",
        "yaml",
        lambda v: False if v == "off" else v,
    ),
    Knob(
        "channels_last",
        "on,off (NHWC on CUDA)",
        _choices(_BOOL),
        (True, False),
        True,
        "yaml",
        lambda v: None if v else False,  # on: left out, Ultralytics' auto (NHWC on CUDA)
    ),
)
NAMES = tuple(k.name for k in KNOBS)
BY_NAME = {k.name: k for k in KNOBS}
IN_CONFIG = tuple(k.name for k in KNOBS if k.carrier == "yaml")  # the knobs an Ultralytics config holds


def parse_flags(values: dict[str, Optional[str]]) -> dict[str, Optional[list]]:
    """Each knob's comma list as given (name -> text, None: not given) -> its values, or None."""
    return {k.name: None if values.get(k.name) is None else k.parse(k.flag, values[k.name]) for k in KNOBS}


def fill_empty(values: dict[str, list]) -> None:
    """A knob whose every value the hardware ruled out runs its fallback (AMP off on CPU, say)."""
    for k in KNOBS:
        if k.fallback is not None and not values.get(k.name):
            values[k.name] = [k.fallback]


def in_config(knobs) -> dict[str, Any]:
    """A trial's knobs as an Ultralytics config holds them, in the table's order; auto values left out."""
    out = {name: BY_NAME[name].to_cfg(getattr(knobs, name)) for name in IN_CONFIG}
    return {name: v for name, v in out.items() if v is not None}


def parse_setting(key: str, value: str, where: str) -> Any:
    """`key=value` of --baseline: the knob's value, or one line naming the knobs."""
    knob = BY_NAME.get(key.strip().replace("-", "_"))
    try:
        if knob is None:
            raise UsageError("unknown")
        return knob.name, knob.parse_one(value)
    except (UsageError, ValueError):
        raise UsageError(f"{where}: not a setting yoloprof varies ({', '.join(NAMES)}) with a valid value") from None
