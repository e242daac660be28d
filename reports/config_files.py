"""best.yaml, best.env and best.sh for the winning trial.

best.yaml holds only keys the installed Ultralytics accepts (the list recorded in scan.json from
`ultralytics.cfg`), so `yolo train cfg=best.yaml` takes it as it is. What a cfg file cannot hold
goes to best.env with a comment, or to findings when nothing can hold it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yoloprof.search.plan import nccl_env, omp_threads
from yoloprof.records import ScanMeta, TrialResult


@dataclass
class BestConfig:
    trial_id: str
    cfg: dict
    env: list[tuple[str, str, str]]  # (name, value, why)
    findings: list[str] = field(default_factory=list)


def _yaml_line(key: str, v) -> str:
    return yaml.safe_dump({key: v}, default_flow_style=False, allow_unicode=True).strip()


def best_config(meta: ScanMeta, best: TrialResult, baseline: TrialResult | None = None) -> BestConfig:
    k = best.knobs
    wanted = {
        "model": meta.model,
        "data": meta.dataset.data,
        "imgsz": meta.imgsz,
        "batch": k.batch,
        "workers": k.workers,
        "amp": k.amp,
        "cache": {"off": False, "ram": "ram", "disk": "disk"}[k.cache],
        "device": ",".join(map(str, meta.gpus)) if meta.device == "cuda" else "cpu",
        "optimizer": meta.optimizer,
    }
    accepted = set(meta.environment.ultralytics_cfg_keys)
    cfg = {key: v for key, v in wanted.items() if key in accepted}
    findings = [f"'{key}' is not an argument of Ultralytics {meta.environment.ultralytics}; left out of best.yaml"
                for key in wanted if key not in accepted]
    if meta.device == "cuda" and "pin_memory" not in accepted:
        findings.append(
            f"pin_memory={'on' if k.pin_memory else 'off'} was measured best, but Ultralytics "
            f"{meta.environment.ultralytics} has no setting for it (its dataloader always pins on GPU)"
        )
    elif "pin_memory" in accepted:
        cfg["pin_memory"] = k.pin_memory
    env = []
    for name, value in sorted(nccl_env(k.nccl).items()):
        env.append((name, value, f"NCCL preset '{k.nccl}' won this scan; NCCL documents {name} as a debugging variable"))
    if meta.device == "cuda" or meta.world_size > 1:
        threads = str(omp_threads(meta.environment.cpu_count, meta.world_size))
        env.append(("OMP_NUM_THREADS", threads, "the value the trials ran with; torchrun sets 1 when it is unset"))
    return BestConfig(best.trial_id, cfg, env, findings)


def render_yaml(meta: ScanMeta, best: TrialResult, cfg: BestConfig) -> str:
    rate = f"{best.img_per_s:.1f} img/s" if best.img_per_s else "n/a"
    lines = [
        f"# yoloprof {meta.yoloprof_version}: best of {len(meta.trial_ids)} trials, trial {best.trial_id} ({rate}).",
        "# Train with:  yolo train cfg=best.yaml epochs=...   (arguments on the command line win over this file)",
    ]
    if meta.dataset.synthetic:
        lines.append("# data: yoloprof's synthetic speed-test dataset; put your own data.yaml here to train for real.")
    if meta.device != "cuda":
        lines.append("# device=cpu: `yolo train` runs one process with workers=0 on CPU (the trials ran DDP ranks).")
    lines += [_yaml_line(key, v) for key, v in cfg.cfg.items()]
    return "\n".join(lines) + "\n"


def render_env(best: TrialResult, cfg: BestConfig) -> str:
    lines = [f"# yoloprof: environment for trial {best.trial_id}. Use:  source best.env && yolo train cfg=best.yaml"]
    for name, value, why in cfg.env:
        lines += [f"# {why}", f"export {name}={shlex.quote(value)}"]
    for finding in cfg.findings:
        lines.append(f"# note: {finding}")
    return "\n".join(lines) + "\n"


def render_sh(meta: ScanMeta, best: TrialResult) -> str:
    return (
        "#!/usr/bin/env bash\n"
        f"# Train with the configuration yoloprof measured best (trial {best.trial_id}).\n"
        "# Extra Ultralytics arguments go after it, e.g.:  ./best.sh epochs=100\n"
        "set -euo pipefail\n"
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
        'source "$here/best.env"\n'
        'exec yolo train cfg="$here/best.yaml" "$@"\n'
    )


def write(out_dir: Path, meta: ScanMeta, best: TrialResult) -> BestConfig:
    out_dir = Path(out_dir)
    cfg = best_config(meta, best)
    (out_dir / "best.yaml").write_text(render_yaml(meta, best, cfg))
    (out_dir / "best.env").write_text(render_env(best, cfg))
    sh = out_dir / "best.sh"
    sh.write_text(render_sh(meta, best))
    sh.chmod(0o755)
    return cfg
