"""The GPU check's machinery: a stage's context and children (each in a session of its own, stopped at the
stage's limit), and the runner that keeps to the budget and writes each result the moment its stage ends,
so that a run cut short still returns what it finished."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from gpu_check_verdicts import Check, verdict_of

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480.0  # the stages' estimates add up to this; the device command gets 540 s with the install
GRACE_S = 20.0  # a stage's children are stopped this long after the budget at the latest
STOP_GRACE_S = 15.0  # SIGTERM, then this long before SIGKILL (a scan ends its trials on SIGTERM)
SUMMARY = "gpu_check.json"
RECORDS_TAR = "records.tar.gz"
RECORD_SUFFIXES = (".json", ".jsonl", ".log", ".csv", ".yaml", ".txt", ".env", ".sh")
RECORD_MAX_BYTES = 256 * 1024  # a longer file (a rank log full of progress bars) keeps its tail


@dataclass
class Ran:
    returncode: Optional[int]
    timed_out: bool
    wall_s: float
    log: Path

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        out = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
        return " | ".join([ln for ln in out if ln][-lines:])

    def line(self, what: str) -> str:
        if self.timed_out:
            return f"{what} stopped at its time limit after {self.wall_s:.0f} s: {self.tail()}"
        return f"{what} exited {self.returncode} in {self.wall_s:.0f} s" + (
            f": {self.tail()}" if self.returncode else ""
        )


@dataclass
class Params:
    """The stages' sizes: GPU for the real check, CPU for a smoke test of the driver itself."""

    device: str = "cuda"
    model: str = "yolo11n.yaml"
    imgsz: int = 640
    batch: int = 64
    workers: int = 8
    amp: str = "on,off,bf16"
    pin_memory: str = "on,off"
    steps: int = 20
    warmup: int = 5
    knobs_model: str = str(ROOT / "tests" / "fixtures" / "tiny-detect.yaml")
    knobs_imgsz: int = 320
    knobs_batch: int = 32
    oom_model: str = "yolo11x.yaml"  # built from YAML, no weights
    oom_imgsz: int = 1280  # ~139 GiB runs out near batch 30-60 here: far below the dataset's 512 images
    oom_batches: tuple[int, ...] = (8, 16)  # the compute probe's points the fit is drawn through


CPU_SMOKE = Params(
    device="cpu",
    imgsz=64,
    batch=4,
    workers=0,
    amp="off",
    pin_memory="off",
    steps=3,
    warmup=1,
    knobs_imgsz=64,
    knobs_batch=4,
)


@dataclass
class Ctx:
    out: Path
    gpu: int = 0
    params: Params = field(default_factory=Params)
    gpu_info: dict = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    stage_deadline: float = float("inf")  # the current stage's children are stopped then
    stage_dir: Optional[Path] = None

    @property
    def cuda(self) -> bool:
        return self.params.device == "cuda"

    def left_s(self) -> float:
        return self.stage_deadline - self.clock()

    def expired(self) -> bool:
        return self.left_s() <= 0

    def env(self, extra: Optional[dict] = None) -> dict:
        return child_env(extra)

    def run(
        self, cmd: list[str], name: str, extra_env: Optional[dict] = None, timeout_s: Optional[float] = None
    ) -> Ran:
        """A child in a session of its own, its output in <stage>/<name>.log, stopped at the stage's limit."""
        log = self.stage_dir / f"{name}.log"
        limit = max(min(timeout_s if timeout_s is not None else float("inf"), self.left_s()), 1.0)
        t0 = time.monotonic()
        with open(log, "wb") as f:
            f.write(("$ " + " ".join(cmd) + "\n").encode())
            f.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(extra_env),
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                from yoloprof.scan.launch import kill_group

                timed_out = True
                kill_group(proc, STOP_GRACE_S)  # a scan ends its trials on SIGTERM
        return Ran(proc.returncode, timed_out, time.monotonic() - t0, log)

    def python(
        self, code: str, name: str, extra_env: Optional[dict] = None, timeout_s: float = 120.0
    ) -> tuple[Ran, dict]:
        """`python -c code` in a fresh process; its result is the JSON on its last `RESULT ` line."""
        ran = self.run([sys.executable, "-c", code], name, extra_env, timeout_s)
        found = {}
        for line in ran.log.read_text(errors="replace").splitlines():
            if line.startswith("RESULT "):
                try:
                    found = json.loads(line[7:])
                except ValueError:
                    pass
        return ran, found


def child_env(extra: Optional[dict] = None) -> dict:
    """The children's environment: this tree importable (yoloprof is not installed on the device machine;
    torchrun's ranks inherit PYTHONPATH) and Ultralytics off the network, as yoloprof's trials run."""
    from yoloprof import paths

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cache = paths.cache_dir()
    for k, v in dict(
        YOLO_OFFLINE="1",
        YOLO_AUTOINSTALL="0",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        YOLO_CONFIG_DIR=str(cache / "ultralytics"),
        MPLCONFIGDIR=str(cache / "matplotlib"),
    ).items():
        env.setdefault(k, v)
    env.update(extra or {})
    return env


@dataclass
class Stage:
    name: str
    estimate_s: float
    fn: Callable[[Ctx], list[Check]]
    what: str
    needs_gpu: bool = False  # skipped by the CPU smoke test


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def pack_records(out: Path, dest: Path) -> None:
    """Every small record under out (no images, weights or compiler caches; long logs keep their tail)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            rel = path.relative_to(out)
            if (
                not path.is_file()
                or path.is_symlink()
                or path.suffix not in RECORD_SUFFIXES
                or rel.name.startswith(".")
            ):
                continue
            if any(part in ("compile-cache", "weights") for part in rel.parts):
                continue
            data = path.read_bytes()
            if len(data) > RECORD_MAX_BYTES:
                data = b"[... cut: the file's last %d bytes follow]\n" % RECORD_MAX_BYTES + data[-RECORD_MAX_BYTES:]
            info = tarfile.TarInfo(str(Path(out.name) / rel))
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, dest)


class Runner:
    """Runs the stages in order under the budget, writing each result the moment its stage ends."""

    def __init__(
        self,
        stages: list[Stage],
        ctx: Ctx,
        budget_s: float = BUDGET_S,
        copy_to: Optional[Path] = None,
        grace_s: float = GRACE_S,
        echo: Callable[[str], None] = print,
    ):
        self.stages, self.ctx, self.budget_s, self.copy_to, self.grace_s, self.echo = (
            stages,
            ctx,
            budget_s,
            copy_to,
            grace_s,
            echo,
        )
        self.t0 = ctx.clock()
        self.records: list[dict] = []
        self.summary = dict(
            tool="benchmarks/gpu_check.py",
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            budget_s=budget_s,
            device=ctx.params.device,
            gpu=ctx.gpu_info,
            finished=False,
            verdict="running",
            plan=[dict(name=s.name, estimate_s=s.estimate_s) for s in stages],
            stages=self.records,
        )

    def elapsed(self) -> float:
        return self.ctx.clock() - self.t0

    def run(self) -> dict:
        self.ctx.out.mkdir(parents=True, exist_ok=True)
        self._save(None)
        for stage in self.stages:
            rec = self._one(stage)
            self.records.append(rec)
            self._save(rec)
        self.summary["finished"] = True
        self._save(None)
        return self.summary

    def _one(self, stage: Stage) -> dict:
        rec = dict(name=stage.name, estimate_s=stage.estimate_s, started_at_s=round(self.elapsed(), 1))
        if stage.needs_gpu and not self.ctx.cuda:
            return {**rec, "status": "skipped", "reason": "needs a GPU (--device cpu)", "checks": []}
        left = self.budget_s - self.elapsed()
        if stage.estimate_s > left:
            why = f"its estimate {stage.estimate_s:.0f} s does not fit the {max(left, 0):.0f} s left of --budget-s {self.budget_s:.0f}"
            self.echo(f"[skip] {stage.name}: {why}")
            return {**rec, "status": "skipped", "reason": why, "checks": []}
        self.echo(f"[....] {stage.name} (about {stage.estimate_s:.0f} s; {self.elapsed():.0f} s gone): {stage.what}")
        sdir = self.ctx.out / stage.name
        shutil.rmtree(sdir, ignore_errors=True)
        sdir.mkdir(parents=True)
        start = self.ctx.clock()
        # Its children may run to twice the estimate (a minute over it at least: a cold start imports torch from
        # disk), never past the budget and its grace.
        over = max(2 * stage.estimate_s, stage.estimate_s + 60)
        self.ctx.stage_deadline = min(start + over, self.t0 + self.budget_s + self.grace_s)
        self.ctx.stage_dir = sdir
        try:
            checks = stage.fn(self.ctx)
            status, error = verdict_of(checks), None
        except Exception as exc:  # noqa: BLE001 - a stage's bug is its result, the next stage still runs
            checks, status = [], "error"
            error = f"{type(exc).__name__}: {exc}"
            (sdir / "traceback.txt").write_text(traceback.format_exc())
        wall = self.ctx.clock() - start
        rec.update(status=status, wall_s=round(wall, 1), checks=[dataclasses.asdict(c) for c in checks])
        if error:
            rec["error"] = error
        mark = {"pass": "PASS", "fail": "FAIL", "n/a": "n/a ", "error": "ERR "}[status]
        self.echo(
            f"[{mark}] {stage.name} in {wall:.0f} s (estimate {stage.estimate_s:.0f} s)"
            + (f": {error}" if error else "")
        )
        for c in checks:
            self.echo(f"    [{ {True: 'ok', False: 'FAIL', None: 'n/a'}[c.ok] }] {c.name}: {c.detail}")
        return rec

    def _save(self, rec: Optional[dict]) -> None:
        out = self.ctx.out
        if rec is not None:
            write_json_atomic(out / f"{rec['name']}.json", rec)
        statuses = [r["status"] for r in self.records]
        if any(s in ("fail", "error") for s in statuses):
            verdict = "fail"
        elif not self.summary["finished"]:
            verdict = "running"
        else:  # "pass with gaps": a stage skipped, or a check that could not say
            verdict = "pass" if statuses and all(s == "pass" for s in statuses) else "pass with gaps"
        self.summary.update(elapsed_s=round(self.elapsed(), 1), verdict=verdict)
        write_json_atomic(out / SUMMARY, self.summary)
        if self.copy_to is not None:
            try:
                write_json_atomic(self.copy_to / SUMMARY, self.summary)
                if rec is not None or self.summary["finished"]:
                    pack_records(out, self.copy_to / RECORDS_TAR)
            except OSError as exc:
                self.echo(f"gpu_check: could not copy results to {self.copy_to}: {exc}")
