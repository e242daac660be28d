"""What travels to the device machine and what its wheels need (benchmarks/gpu_prepare.sh): checked here,
before the lease, because the device machine can reach no registry and carries at most 64 MiB."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Callable

from gpu_check_run import ROOT

TRAVEL_LIMIT_BYTES = 64 * 2**20  # what the device tool carries: tracked + untracked-not-ignored + carried paths
CARRY = (".whl",)

# The device image's Python packages (opencv-python-headless provides ultralytics' opencv-python).
DEVICE_PACKAGES = set(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize huggingface-hub hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
PROVIDED_BY = {"opencv-python": "opencv-python-headless"}  # the same cv2 module


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def git_files(root: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", *args], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def travel_files(root: Path, carry: tuple[str, ...] = CARRY) -> dict[str, int]:
    """{path: bytes} of what the device tool sends: git-tracked files, untracked files git does not ignore,
    and the carried paths (a symbolic link counts as itself)."""
    found: dict[str, int] = {}
    for rel in git_files(root, "--cached") + git_files(root, "--others", "--exclude-standard"):
        p = root / rel
        if p.is_symlink() or p.is_file():
            found[rel] = p.lstat().st_size
    for c in carry:
        base = root / c
        paths = (
            [base]
            if base.is_file()
            else (sorted(x for x in base.rglob("*") if x.is_file() or x.is_symlink()) if base.is_dir() else [])
        )
        for p in paths:
            found[str(p.relative_to(root))] = p.lstat().st_size
    return found


def wheel_requirements(whl: Path) -> list[str]:
    """The Requires-Dist lines of a wheel that apply on the device (Linux x86-64, CPython 3.12, no extras)."""
    import zipfile

    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = [
            ln[len("Requires-Dist:") :].strip()
            for ln in z.read(meta).decode(errors="replace").splitlines()
            if ln.startswith("Requires-Dist:")
        ]
    out = []
    for req in lines:
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        if marker.strip():
            try:
                from packaging.markers import Marker

                env = dict(
                    python_version="3.12",
                    python_full_version="3.12.3",
                    sys_platform="linux",
                    platform_system="Linux",
                    platform_machine="x86_64",
                    os_name="posix",
                    implementation_name="cpython",
                    platform_python_implementation="CPython",
                )
                if not Marker(marker.strip()).evaluate(env):
                    continue
            except Exception:  # noqa: BLE001 - no packaging here: keep the requirement, to be safe
                pass
        out.append(re.split(r"[\s(<>=!~\[]", spec.strip(), maxsplit=1)[0])
    return out


def wheel_name(whl: Path) -> str:
    return norm(whl.name.split("-")[0])


def missing_requirements(wheels: list[Path], present: set[str] = DEVICE_PACKAGES) -> dict[str, list[str]]:
    """{wheel: [requirements neither on the device nor among the wheels]}."""
    have = {norm(p) for p in present} | {wheel_name(w) for w in wheels}
    out = {}
    for w in wheels:
        lack = [r for r in wheel_requirements(w) if norm(PROVIDED_BY.get(norm(r), r)) not in have]
        if lack:
            out[w.name] = lack
    return out


def check_travel(root: Path = ROOT, limit: int = TRAVEL_LIMIT_BYTES, echo: Callable[[str], None] = print) -> int:
    files = travel_files(root)
    total = sum(files.values())
    whl = sorted((root / ".whl").glob("*.whl"))
    carried = sum(v for k, v in files.items() if k.startswith(".whl"))
    echo(
        f"travels: {len(files)} files, {total / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB "
        f"(.whl {carried / 2**20:.1f} MiB, the rest {(total - carried) / 2**20:.1f} MiB)"
    )
    for k, v in sorted(files.items(), key=lambda kv: -kv[1])[:5]:
        echo(f"  {v / 2**20:8.2f} MiB  {k}")
    code = 0
    names = {}
    for w in whl:
        names.setdefault(wheel_name(w), []).append(w.name)
    for n, ws in names.items():
        if len(ws) > 1:
            echo(f"two versions of {n} in .whl: {', '.join(ws)} (pip refuses both): remove one")
            code = 1
    readable = []
    for w in whl:
        try:
            wheel_requirements(w)
            readable.append(w)
        except Exception as exc:  # noqa: BLE001 - a broken download
            echo(f"{w.name}: not a readable wheel ({type(exc).__name__}: {exc})")
            code = 1
    for w, lack in missing_requirements(readable).items():
        echo(f"{w} needs {', '.join(lack)}: not on the device machine and not in .whl")
        code = 1
    if total >= limit:
        echo(
            "over the device tool's limit: recompress the big wheels (XZ=1 bash benchmarks/gpu_prepare.sh) "
            "or ignore what need not travel"
        )
        code = 1
    return code


def recompress_wheels(
    folder: Path = ROOT / ".whl", over_bytes: int = 8 * 2**20, echo: Callable[[str], None] = print
) -> None:
    """Rewrite each wheel over `over_bytes` with LZMA entries: pip reads them like deflated ones, the
    hashes in RECORD are of the contents and stay true; a wheel already recompressed is left alone."""
    import zipfile

    for whl in sorted(folder.glob("*.whl")):
        if whl.stat().st_size <= over_bytes:
            continue
        with zipfile.ZipFile(whl) as z:
            if any(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist()):
                continue
            before, tmp = whl.stat().st_size, whl.with_name(f".{whl.name}.tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as out:
                for info in z.infolist():
                    out.writestr(info, z.read(info), compress_type=zipfile.ZIP_LZMA)
        os.replace(tmp, whl)
        echo(f"{whl.name}: {before / 2**20:.1f} -> {whl.stat().st_size / 2**20:.1f} MiB (LZMA)")
