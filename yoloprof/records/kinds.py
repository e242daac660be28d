"""The closed sets of strings records hold, as types: a reader sees what a field may say, and `from_dict`
refuses a saved value outside its set (a record from another schema, or a typo in a fixture)."""

from __future__ import annotations

from typing import Literal

Backend = Literal["nccl", "gloo"]
Cache = Literal["off", "ram", "disk"]
Device = Literal["cpu", "cuda"]  # the kind of device; a rank's own device ("cuda:1") is a plain str
Timing = Literal["host", "cuda_event", "cuda_sync", "host_after_device_error"]
TrialStatus = Literal["ok", "error", "timeout", "oom", "skipped", "interrupted"]
