"""best.yaml, best.env and best.sh for the winning trial.

best.yaml holds only keys the installed Ultralytics accepts (the list recorded in scan.json from
`ultralytics.cfg`), so `yolo train cfg=best.yaml` takes it as it is. What a cfg file cannot hold
goes to best.env with a comment, or to findings when nothing can hold it.

With --cfg, best.yaml is the user's own config, every key as they wrote it and in their order, with
only the measured settings the recommended trial changed against "your settings" rewritten, each
with the difference that was measured (a team reviews a diff of their config, not a new file).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yoloprof.analysis import noise, tradeoffs
from yoloprof.analysis import optimizer as optim
from yoloprof.search import knob_table
from yoloprof.search.baselines import YOURS
from yoloprof.search.plan import nccl_env, omp_threads
from yoloprof.search.usercfg import MEASURED
from yoloprof.records import Knobs, ScanMeta, TrialResult


@dataclass
class BestConfig:
    trial_id: str
    cfg: dict
    env: list[tuple[str, str, str]]  # (name, value, why)
    findings: list[str] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)  # --cfg: key -> what was measured against your value
    header: list[str] = field(default_factory=list)  # --cfg: what changed, against which trial
    nnodes: int = 1  # nodes the scan spanned: training across them needs `yoloprof train` (best.sh)
    optimizer_note: str | None = None  # no optimizer written: which one Ultralytics' auto will pick, and why


def _yaml_line(key: str, v) -> str:
    return yaml.safe_dump({key: v}, default_flow_style=False, allow_unicode=True).strip()


def _scalar(v) -> str:
    """A value as YAML writes it (true, not True)."""
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _cfg_value(knobs: Knobs, key: str):
    """A knob as Ultralytics takes it in a config (None: its auto)."""
    return knob_table.BY_NAME[key].to_cfg(getattr(knobs, key))


def best_config(
    meta: ScanMeta, best: TrialResult, baseline: TrialResult | None = None, results: list[TrialResult] | None = None
) -> BestConfig:
    """`results` (every trial's) give --cfg's comments their measured difference and its interval."""
    k = best.knobs
    wanted = {
        "model": meta.model,
        "data": meta.dataset.data,
        "imgsz": meta.imgsz,
        **knob_table.in_config(k),  # channels_last on is left out: Ultralytics' auto (NHWC on CUDA)
        "device": ",".join(map(str, meta.gpus)) if meta.device == "cuda" else "cpu",
        **optimizer_key(meta),
    }
    accepted = set(meta.environment.ultralytics_cfg_keys)
    comments, header = {}, []
    if meta.train_cfg_args:
        cfg, comments, header, findings = _user_config(meta, best, results or [], accepted)
    else:
        cfg = {key: v for key, v in wanted.items() if key in accepted}
        findings = [
            f"'{key}' is not an argument of Ultralytics {meta.environment.ultralytics}; left out of best.yaml"
            for key in wanted
            if key not in accepted
        ]
        comments = {
            key: note
            for key, note in tradeoffs.config_notes(results or [best], best, meta.dataset.train_images).items()
            if key in cfg
        }
    if meta.device == "cuda" and "pin_memory" not in accepted:
        findings.append(
            f"pin_memory={'on' if k.pin_memory else 'off'} was measured best, but Ultralytics "
            f"{meta.environment.ultralytics} has no setting for it (its dataloader always pins on GPU)"
        )
    elif "pin_memory" in accepted and not meta.train_cfg_args:  # --cfg: written only where it changed
        cfg["pin_memory"] = k.pin_memory
    env = []
    for name, value in sorted(nccl_env(k.nccl).items()):
        env.append(
            (name, value, f"NCCL preset '{k.nccl}' won this scan; NCCL documents {name} as a debugging variable")
        )
    if meta.device == "cuda" or meta.world_size > 1:
        threads = str(omp_threads(meta.environment.cpu_count, ranks_per_node(meta)))
        env.append(("OMP_NUM_THREADS", threads, "the value the trials ran with; torchrun sets 1 when it is unset"))
    return BestConfig(
        best.trial_id,
        cfg,
        env,
        findings,
        comments,
        header,
        nnodes=meta.nnodes,
        optimizer_note=optimizer_note(meta, best),
    )


def optimizer_key(meta: ScanMeta) -> dict:
    """{"optimizer": name} where the user named one (--optimizer, or scans from before auto was resolved, which
    pinned theirs); {} for auto: plain `yolo train` then picks for itself, what the trials were given."""
    p = meta.optimizer_plan
    if p is None:
        return {"optimizer": meta.optimizer}
    return {} if optim.is_auto(p.asked) else {"optimizer": p.asked}


def optimizer_note(meta: ScanMeta, best: TrialResult) -> str | None:
    """Where best.yaml leaves the optimizer to Ultralytics' auto: the one it will pick for the recommended batch
    and the planned epochs, and whether the trials timed that one."""
    p = meta.optimizer_plan
    if p is None or not optim.is_auto(p.asked):
        return None
    return optim.yaml_note(p, best.knobs.batch, meta.run_plan.epochs, best.optimizer)


def _user_config(meta: ScanMeta, best: TrialResult, results: list[TrialResult], accepted: set):
    """(cfg, comments, header, findings): the user's config, changed only where the recommended trial's
    knobs differ from their settings' trial. A change within the noise is still written (it is what was
    recommended) and its comment says so; the measurement's own overrides are never written."""
    args, yid = dict(meta.train_cfg_args), meta.baselines.get(YOURS)
    yours = next((s.knobs for s in meta.specs if s.trial_id == yid), None)
    keys = MEASURED + (("pin_memory",) if "pin_memory" in accepted else ())  # a release that has the argument
    changed = [
        key
        for key in keys
        if yours is not None
        and getattr(yours, key) != getattr(best.knobs, key)
        and not (key in args and args[key] == _cfg_value(best.knobs, key))
    ]  # your trial ran a capped value
    d = noise.difference(results, yid, best.trial_id) if yid else None
    if d is None or d.ratio != d.ratio:  # nan: your settings' trial has no figure
        status = next((r.status for r in results if r.trial_id == yid), "no result")
        gain = f"your settings' trial {yid} did not finish ({status}), so no difference was measured"
    else:
        gain = d.gain_text("img/s")
    cfg, comments, findings = dict(args), {}, []
    for key in changed:
        if key not in accepted and key not in args:
            findings.append(
                f"'{key}' is not an argument of Ultralytics {meta.environment.ultralytics}; left out of best.yaml"
            )
            continue
        was = _scalar(args[key]) if key in args else f"{_scalar(_cfg_value(yours, key))} (not in your config)"
        cfg[key] = _cfg_value(best.knobs, key)
        others = [c for c in changed if c != key]
        cost = tradeoffs.trade_off(key, getattr(best.knobs, key))
        comments[key] = (
            f"was {was}: {gain}"
            + (f", together with {' and '.join(others)}" if others else "")
            + f", yoloprof {best.trial_id}"
            + (f"; it {cost}" if cost else "")
        )
    rate = f" ({best.img_per_s:.1f} img/s)" if best.img_per_s else ""
    header = [
        f"# yoloprof {meta.yoloprof_version}: your config {meta.train_cfg or ''}, with the recommended trial "
        f"{best.trial_id}{rate} against your settings (trial {yid or 'not run'})."
    ]
    header.append(
        f"# Changed: {', '.join(comments)} (each line says what was measured); every other line is yours."
        if comments
        else "# Nothing to change: your measured settings were the recommended ones."
    )
    p = meta.optimizer_plan
    if p is not None and p.source == "--optimizer" and not optim.is_auto(p.asked) and "optimizer" not in args:
        cfg["optimizer"] = p.asked  # named on the command line only: plain `yolo train` would otherwise pick auto's
        comments["optimizer"] = "from --optimizer: the optimizer every trial ran (not in your config)"
    return cfg, comments, header, findings


def ranks_per_node(meta: ScanMeta) -> int:
    return max(meta.world_size // max(meta.nnodes, 1), 1)


def _train_with(meta: ScanMeta, epochs: str = "") -> str:
    if meta.nnodes > 1:
        return (
            f"# Train with:  NODE_RANK=k ./best.sh{epochs} on each of the {meta.nnodes} nodes (`yoloprof train`: "
            "plain `yolo train` trains on one node only)"
        )
    return f"# Train with:  yolo train cfg=best.yaml{epochs}   (arguments on the command line win over this file)"


def render_yaml(meta: ScanMeta, best: TrialResult, cfg: BestConfig) -> str:
    rate = f"{best.img_per_s:.1f} img/s" if best.img_per_s else "n/a"
    note = [f"# {cfg.optimizer_note}"] if cfg.optimizer_note else []
    if cfg.header:  # --cfg: the user's file, changed lines commented
        lines = [*cfg.header, _train_with(meta), *note]
        if meta.dataset.synthetic and "data" not in meta.train_cfg_args:
            lines.append("# data: measured on yoloprof's synthetic speed-test dataset; your config names none.")
        lines += [
            _yaml_line(key, v) + (f"  # {cfg.comments[key]}" if key in cfg.comments else "")
            for key, v in cfg.cfg.items()
        ]
        return "\n".join(lines) + "\n"
    lines = [
        f"# yoloprof {meta.yoloprof_version}: best of {len(meta.trial_ids)} trials, trial {best.trial_id} ({rate}).",
        _train_with(meta, " epochs=..."),
    ]
    if meta.dataset.synthetic:
        lines.append("# data: yoloprof's synthetic speed-test dataset; put your own data.yaml here to train for real.")
    if meta.device != "cuda" and meta.nnodes <= 1:
        lines.append("# device=cpu: `yolo train` runs one process with workers=0 on CPU (the trials ran DDP ranks).")
    lines += note
    lines += [
        _yaml_line(key, v) + (f"  # {cfg.comments[key]}" if key in cfg.comments else "") for key, v in cfg.cfg.items()
    ]
    return "\n".join(lines) + "\n"


def render_env(best: TrialResult, cfg: BestConfig) -> str:
    use = (
        "`yoloprof train` reads it (best.sh, on every node)"
        if cfg.nnodes > 1
        else "source best.env && yolo train cfg=best.yaml"
    )
    lines = [f"# yoloprof: environment for trial {best.trial_id}. Use:  {use}"]
    for name, value, why in cfg.env:
        lines += [f"# {why}", f"export {name}={shlex.quote(value)}"]
    for finding in cfg.findings:
        lines.append(f"# note: {finding}")
    return "\n".join(lines) + "\n"


# A rendezvous endpoint written into best.sh as a default, inside "${RDZV_ENDPOINT:-...}": nothing the shell expands.
_SAFE_ENDPOINT = re.compile(r"^[A-Za-z0-9._\[\]:-]+$")


def render_sh(meta: ScanMeta, best: TrialResult) -> str:
    if meta.nnodes > 1:
        return _render_sh_nodes(meta, best)
    return (
        "#!/usr/bin/env bash\n"
        f"# Train with the configuration yoloprof measured best (trial {best.trial_id}).\n"
        "# Extra Ultralytics arguments go after it, e.g.:  ./best.sh epochs=100\n"
        "set -euo pipefail\n"
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
        'source "$here/best.env"\n'
        'exec yolo train cfg="$here/best.yaml" "$@"\n'
    )


def _render_sh_nodes(meta: ScanMeta, best: TrialResult) -> str:
    """A scan across nodes trains across them: `yoloprof train` on every node, each with its NODE_RANK."""
    n, last = meta.nnodes, meta.nnodes - 1
    endpoint = meta.rdzv_endpoint if meta.rdzv_endpoint and _SAFE_ENDPOINT.match(meta.rdzv_endpoint) else None
    rdzv = (
        f'"${{RDZV_ENDPOINT:-{endpoint}}}"'
        if endpoint
        else '"${RDZV_ENDPOINT:?set RDZV_ENDPOINT to HOST:PORT of node 0}"'
    )
    per_node = "" if meta.device == "cuda" else f" --nproc {ranks_per_node(meta)}"  # GPUs: best.yaml's device list
    return (
        "#!/usr/bin/env bash\n"
        f"# Train with the configuration yoloprof measured best (trial {best.trial_id}), across the {n} nodes the scan "
        "spanned.\n"
        "# Not plain `yolo train`: Ultralytics builds its DDP world from one node's devices and launches torchrun\n"
        "# for one node only. `yoloprof train` starts torchrun with a c10d rendezvous on node 0 and gives\n"
        "# Ultralytics' own trainer the global rank, the world size of all nodes and each rank's local device.\n"
        f"# Run it on every node with that node's rank, 0..{last}; node 0 writes the checkpoints and metrics:\n"
        f"#   NODE_RANK=0 ./best.sh        (node 0)      NODE_RANK={last} ./best.sh   (node {last})\n"
        + ("" if endpoint else "# and RDZV_ENDPOINT=HOST:PORT, node 0's address and a free port, on every node.\n")
        + "# Extra Ultralytics arguments go after it, e.g.:  NODE_RANK=0 ./best.sh epochs=100\n"
        "set -euo pipefail\n"
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
        f'exec yoloprof train "$here/best.yaml" --env "$here/best.env" --nnodes {n}{per_node} \\\n'
        f'    --node-rank "${{NODE_RANK:?set NODE_RANK to the rank of this node, 0..{last}}}" --rdzv-endpoint {rdzv} "$@"\n'
    )


def write(out_dir: Path, meta: ScanMeta, best: TrialResult, results: list[TrialResult]) -> BestConfig:
    """best.yaml, best.env and best.sh; `results` are every trial's (the comments' figures pool the noise over
    repeats), handed in by the pipeline that read them, so this module reads no scan folder itself."""
    out_dir = Path(out_dir)
    cfg = best_config(meta, best, results=results)
    (out_dir / "best.yaml").write_text(render_yaml(meta, best, cfg))
    (out_dir / "best.env").write_text(render_env(best, cfg))
    sh = out_dir / "best.sh"
    sh.write_text(render_sh(meta, best))
    sh.chmod(0o755)
    return cfg
