"""What `yoloprof scan` was asked, checked before anything runs: flags, hardware, data, output folder.

Every mistake here is one line and exit 2 (UsageError), so it costs the user nothing but a retry.
"""

from __future__ import annotations

import os
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console

from yoloprof import paths
from yoloprof.analysis import dataset_fit
from yoloprof.data import datainfo
from yoloprof.data.dataset import DEFAULT_IMAGES, MAX_IMAGES, MIN_STEPS_PER_EPOCH, SyntheticSpec, ensure
from yoloprof.errors import UsageError
from yoloprof.records import DatasetInfo, Environment, MemoryBudget, RunPlan
from yoloprof.scan import STEPS, WARMUP
from yoloprof.search import knob_table, plan

DEFAULT_MODEL = "yolo26n.yaml"  # what `yolo train` uses (yolo26n.pt), built from its YAML
DEFAULT_CPU_RANKS = 2


@dataclass
class ScanRequest:
    gpus: Optional[str] = None
    device: Optional[str] = None  # "cpu" forces CPU ranks
    nproc: Optional[int] = None
    model: Optional[str] = None
    data: Optional[str] = None
    imgsz: Optional[int] = None
    optimizer: str = "auto"  # Ultralytics' default, resolved per trial for the planned run (analysis.optimizer)
    warmup: int = WARMUP
    steps: int = STEPS
    out: Optional[str] = None
    batch: Optional[str] = None
    workers: Optional[str] = None
    amp: Optional[str] = None
    pin_memory: Optional[str] = None
    cache: Optional[str] = None
    nccl: Optional[str] = None
    deterministic: Optional[str] = None
    compile: Optional[str] = None
    channels_last: Optional[str] = None
    trial_timeout: Optional[float] = None
    no_ceilings: bool = False
    no_epoch_job: bool = False  # skip timing validation, saving and the epoch end (the predictions then leave them out)
    baseline: Optional[str] = None  # the user's current settings, "batch=32,workers=4,amp=off"
    no_defaults: bool = False
    ranks: Optional[str] = None  # world sizes to compare (scaling), e.g. "1,2,4"
    strategy: Optional[str] = None  # "auto" | "grid"; None: grid where knob lists are given, else auto
    budget: Optional[str] = None  # auto: "5m", "300s", "0.5h" or minutes
    precision: Optional[str] = None  # "3%", "0.03" or "off"
    max_steps: Optional[int] = None
    no_reuse: bool = False  # a torchrun launch per trial instead of rank pools
    cfg: Optional[str] = None  # the user's Ultralytics training config (what `yolo train cfg=` takes)
    epochs: Optional[int] = None  # the run to predict (default: the config's epochs, else Ultralytics' 100)
    gpu_hour_price: Optional[float] = None  # per GPU-hour (per rank-hour on CPU)
    currency: Optional[str] = None
    nnodes: Optional[int] = None  # several nodes: the same command on each, with its own --node-rank
    node_rank: Optional[int] = None
    rdzv_endpoint: Optional[str] = None  # node 0's HOST:PORT
    allreduce_max_bytes: Optional[int] = None  # the link probe's largest message (256 MiB on GPUs, 32 MiB on CPU)
    mem_limit: Optional[str] = None  # the memory the dataset may use ("2GiB"), instead of what the machine reports
    command: list[str] = field(default_factory=list)

    @classmethod
    def flag_names(cls) -> list[str]:
        """The fields a command-line flag sets (the rest are the scan's own: the command, the link's sweep)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("command", "allreduce_max_bytes")]

    @classmethod
    def from_flags(cls, args, command: list[str]) -> "ScanRequest":
        """The request from parsed flags: a flag left out (None) keeps the default written above, the one place."""
        given = {k: getattr(args, k) for k in cls.flag_names() if getattr(args, k, None) is not None}
        return cls(**given, command=command)


DEFAULT_PRECISION = 0.03
MAX_STEPS_FACTOR = 3  # a trial measures at most 3x its minimum steps unless --max-steps says otherwise
DEFAULT_BUDGET_S = {"cpu": 300.0, "cuda": 600.0}


def parse_precision(text: Optional[str]) -> Optional[float]:
    if text is None:
        return DEFAULT_PRECISION
    if str(text).strip().lower() in ("off", "none", "0"):
        return None
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%")) / (100 if raw.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise UsageError(f"--precision {text}: give the interval's half-width as 3% or 0.03 (or off for fixed steps)")
    return value


def parse_budget(text: Optional[str], device: str) -> float:
    """Seconds; a bare number is minutes."""
    if text is None:
        return DEFAULT_BUDGET_S[device]
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--budget {text}: give a time such as 5m, 300s or 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600, None: 60}[m.group(2)]


def resolve_strategy(req: ScanRequest, given: dict) -> str:
    if req.strategy not in (None, "auto", "grid"):
        raise UsageError(f"--strategy {req.strategy}: use auto (search within a budget) or grid (every combination)")
    if req.strategy is not None:
        return req.strategy
    return "grid" if any(v is not None for v in given.values()) or req.ranks else "auto"


def parse_axes(req: ScanRequest) -> dict[str, Optional[list]]:
    """Each knob's flag as given -> its values (None: not given), as the knob table parses them."""
    return knob_table.parse_flags({name: getattr(req, name) for name in knob_table.NAMES})


def resolve_run_plan(req: ScanRequest, cfg_args: Optional[dict] = None) -> RunPlan:
    """The run to predict: flags win over the user's config, which wins over Ultralytics' defaults."""
    from yoloprof.analysis.epoch import plan_run

    return plan_run(cfg_args, req.epochs, req.gpu_hour_price, req.currency)


def check_numbers(req: ScanRequest) -> None:
    if req.steps < 1:
        raise UsageError(f"--steps {req.steps}: measure at least 1 step (default 20)")
    if req.warmup < 0:
        raise UsageError(f"--warmup {req.warmup}: cannot be negative (default 5)")
    if req.imgsz is not None and req.imgsz < 32:
        raise UsageError(f"--imgsz {req.imgsz}: must be at least 32 (the model's largest stride)")
    if req.nproc is not None and req.nproc < 1:
        raise UsageError(f"--nproc {req.nproc}: run at least 1 rank")
    if req.trial_timeout is not None and req.trial_timeout <= 0:
        raise UsageError(f"--trial-timeout {req.trial_timeout}: give seconds > 0")
    if req.max_steps is not None and req.max_steps < req.steps:
        raise UsageError(f"--max-steps {req.max_steps}: must be at least --steps {req.steps} (the minimum)")


def resolve_hardware(req: ScanRequest, env: Environment) -> tuple[plan.Hardware, str]:
    visible = [g.index for g in env.gpus]
    if req.device not in (None, "cpu", "cuda", "gpu"):
        raise UsageError(f"--device {req.device}: use cpu, or --gpus to pick GPUs")
    if req.gpus is not None and req.device == "cpu":
        raise UsageError("--gpus and --device cpu contradict each other; give one of them")
    if req.gpus is not None:
        if not visible:
            raise UsageError(f"--gpus {req.gpus}: this machine has no GPU visible to torch; use --device cpu --nproc 2")
        gpus = plan.parse_ints("--gpus", req.gpus, 0)
        missing = [g for g in gpus if g not in visible]
        if missing:
            raise UsageError(
                f"--gpus {req.gpus}: GPU {missing[0]} is not there; visible GPUs are {','.join(map(str, visible))}"
            )
        if req.nproc is not None and req.nproc != len(gpus):
            raise UsageError(
                f"--nproc {req.nproc} with --gpus {req.gpus}: on GPUs there is one rank per GPU; drop --nproc"
            )
        why = f"GPUs {','.join(map(str, gpus))} as asked"
    elif req.device != "cpu" and visible:
        if req.nproc is not None:
            raise UsageError("--nproc is for CPU ranks; on GPUs pick them with --gpus 0,1")
        gpus, why = visible, f"every visible GPU ({len(visible)}), one rank each"
    else:
        if req.device in ("cuda", "gpu"):
            raise UsageError("--device cuda: this machine has no GPU visible to torch; use --device cpu")
        n = req.nproc or DEFAULT_CPU_RANKS
        hw = plan.Hardware("cpu", n, [], env.cpu_count, 0, compile_blocker=compile_blocker(env, "cpu"))
        return hw, f"{n} CPU ranks with gloo" + ("" if req.device == "cpu" else " (no GPU visible)")
    return plan.Hardware(
        "cuda",
        len(gpus),
        gpus,
        env.cpu_count,
        len(visible),
        bf16=bf16(env, gpus),
        compile_blocker=compile_blocker(env, "cuda"),
    ), f"{why}, NCCL"


def bf16(env, gpus: list[int]) -> Optional[bool]:
    """Every GPU of the scan has native bfloat16 (compute capability 8.0+, what Ultralytics requires); None: unknown."""
    caps = [g.capability for g in env.gpus if g.index in gpus]
    if not caps or any(c is None for c in caps):
        return None
    return all(c[0] >= 8 for c in caps)


def compile_blocker(env, device: str) -> Optional[str]:
    """Why torch.compile cannot run here, or None. Ultralytics would train uncompiled without a word in the results."""
    if device == "cpu" and not env.cxx_compiler:
        return "inductor needs a C++ compiler for CPU kernels and none was found (install g++)"
    if device == "cuda" and not env.triton:
        return "inductor needs Triton for GPU kernels and it is not installed"
    return None


def _model_task(model: Optional[str]) -> Optional[str]:
    """The model's task where yoloprof measures it; None when not given, unreadable or another task
    (model_check.resolve then says why in one line)."""
    if model is None:
        return None
    from yoloprof.probes import model_check

    try:
        task = model_check.model_task(model)
    except Exception:  # noqa: BLE001 - the model's own check gives the one line
        return None
    return task if task in model_check.TASKS else None


WANT = {
    "classify": "a classify folder (train/<class>/, val/<class>/)",
    "pose": "a pose data yaml (with kpt_shape)",
    "segment": "a data yaml with segment polygons",
    "obb": "a data yaml with oriented boxes (class x1 y1 ... x4 y4)",
    "detect": "a detect data yaml (class x y w h)",
}


def check_task(model: str, task: str, data: DatasetInfo) -> None:
    """A model trains on data of its task's format only (detect also reads polygons and corners)."""
    if task in datainfo.COMPATIBLE.get(data.task, (data.task,)):
        return
    from yoloprof.probes.model_check import DEFAULT_MODELS

    other = DEFAULT_MODELS.get(data.task, DEFAULT_MODEL)
    raise UsageError(
        f"--model {model} is {_a(task)} model, but --data {data.data} holds {datainfo.FORMATS[data.task]}; "
        f"give {WANT[task]}, or {_a(data.task)} model (e.g. --model {other})"
    )


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeio' else 'a'} {word}"


def resolve_data(req: ScanRequest, console: Console, images: Optional[int] = None) -> DatasetInfo:
    """The dataset, read for the model's task; without --data, the synthetic dataset of the model's task,
    with `images` training images (dataset.images_for the scan's largest batch; None: its default 512);
    without --model, the data's task's default model (sets req.model: a pose yaml -> yolo26n-pose.yaml)."""
    from yoloprof.probes.model_check import DEFAULT_MODELS

    task, given = _model_task(req.model), req.model
    if req.data is not None:
        info = datainfo.inspect(req.data)
        if req.model is None:
            req.model = DEFAULT_MODELS[info.task] if info.task != "detect" else None  # None: DEFAULT_MODEL
        elif task is not None:
            check_task(req.model, task, info)
            info.task = task  # detect or segment on obb labels, say: read as the model's task
    else:
        sized = {} if images is None or images == DEFAULT_IMAGES else {"images": images}
        spec = SyntheticSpec(task=task or "detect", **sized)
        target = paths.cache_dir() / "datasets" / spec.key
        if not target.is_dir():
            kind = "" if spec.task == "detect" else f"{spec.task} "
            sizing = (
                f", {MIN_STEPS_PER_EPOCH} steps an epoch at the largest batch the scan may run, at most "
                f"{MAX_IMAGES} images"
                if spec.images > DEFAULT_IMAGES
                else ""
            )
            console.print(
                f"Generating the built-in synthetic {kind}dataset ({spec.images} images, "
                f"{spec.width}x{spec.height}{sizing}) into {target} (once)..."
            )
        info = datainfo.inspect(ensure(paths.cache_dir(), spec))
    if info.task != "detect" and (task or not given):  # a model that cannot be read gets its own line next
        console.print(
            f"task: {info.task} (" + (f"the model's, {req.model}" if task else f"the data's: --model {req.model}") + ")"
        )
    return info


MEM_LIMIT_ENV = "YOLOPROF_MEM_LIMIT"


def resolve_memory(req: ScanRequest) -> MemoryBudget:
    """The memory the dataset-fit test uses: --mem-limit, else $YOLOPROF_MEM_LIMIT, else what the machine reports
    (psutil's available memory, or less where the cgroup's limit leaves less)."""
    from yoloprof.probes import host_memory

    text, flag = (
        (req.mem_limit, "--mem-limit") if req.mem_limit is not None else (os.environ.get(MEM_LIMIT_ENV), MEM_LIMIT_ENV)
    )
    mib = dataset_fit.parse_mem_limit(text, flag) if text is not None else None
    return host_memory.budget(mib, text)


def prepare_out(req: ScanRequest, kind: str = "scan") -> Path:
    if req.out is None:
        out = paths.next_run_dir(kind)
    else:
        out = Path(req.out).expanduser()
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: is a file; give a new folder")
        if out.is_dir() and any(out.iterdir()):
            if (out / paths.SCAN_MARKER).is_file():
                raise UsageError(f"--out {out}: holds an earlier scan; give a new folder (or resume it with --resume)")
            raise UsageError(f"--out {out}: is not empty and not a yoloprof scan; give a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror}); give a writable folder") from None
    return out
