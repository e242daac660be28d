"""Text from other programs made fit for records: one line, no terminal colour codes.

Ultralytics colours its messages (`colorstr`), and those escape codes would otherwise travel into
result.json, results.csv, the terminal table and the report.
"""

from __future__ import annotations

import re
from typing import Optional

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def strip_ansi(text: Optional[str]) -> Optional[str]:
    return None if text is None else _ANSI.sub("", text)


def error_line(exc: BaseException) -> str:
    """'Type: first line of the message', without colour codes."""
    text = (strip_ansi(str(exc)) or "").strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
