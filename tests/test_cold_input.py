"""Datasets larger than the page cache: the memory the dataset may use, the fit test, epochs priced at the
loaders' cold rate, the search's judgement, and the eviction itself (mincore on real files); then the cold
probe for real on CPU (slow).

Expected figures are computed here from the raw inputs, by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yoloprof.probes import environment, host_memory, loader_bench, page_cache
from yoloprof import cli, pipeline
from yoloprof.analysis import dataset_fit, epoch, intervals
from yoloprof.analysis.headroom import Ceilings
from yoloprof.errors import UsageError
from yoloprof.records import (
    Breakdown,
    DatasetInfo,
    Knobs,
    LoaderCeiling,
    LoaderPoint,
    MemoryBudget,
    RunPlan,
    ScanMeta,
    TrialResult,
    from_dict,
    read_json,
    to_dict,
    write_json,
)
from yoloprof.search.plan import Hardware
from yoloprof.search.prune import prune
from yoloprof.search.space import Space

MIB = 2**20
K0 = Knobs(16, 0, False, False, "off", "default")
K2 = Knobs(16, 2, False, False, "off", "default")


def data(train_bytes=900 * MIB, val_bytes=100 * MIB, images=10000) -> DatasetInfo:
    return DatasetInfo("/d.yaml", images, 500, ["a"], False, train_bytes=train_bytes, val_bytes=val_bytes)


def budget(mib: float, source="override") -> MemoryBudget:
    return MemoryBudget(available_mib=mib, source=source, override=f"{mib:g}MiB" if source == "override" else None)


def point(workers, warm, cold, cold_ci=(None, None), cache=None, ranks=2, **kw) -> LoaderPoint:
    return LoaderPoint(
        workers,
        workers,
        ranks,
        8,
        20,
        warm / ranks,
        warm,
        150.0,
        pin_memory=False,
        cache=cache,
        img_per_s_machine_cold=cold,
        img_per_s_machine_cold_ci_low=cold_ci[0],
        img_per_s_machine_cold_ci_high=cold_ci[1],
        **kw,
    )


def trial(tid="t1", knobs=K2, rate=100.0, ci=(90.0, 110.0)) -> TrialResult:
    return TrialResult(
        tid,
        "ok",
        knobs,
        2,
        "cpu",
        img_per_s=rate,
        img_per_s_ci_low=ci[0],
        img_per_s_ci_high=ci[1],
        batches_per_epoch=32,
        accumulate=4,
        breakdown=Breakdown(0, 0, 0, 0, 0, 10.0, 0, 100.0),
    )


# --- the memory the dataset may use ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,mib",
    [
        ("512MiB", 512.0),
        ("1.5GiB", 1536.0),
        ("800MB", 800e6 / MIB),
        ("2048", 2048.0),
        ("2g", 2048.0),
        (" 64 kib ", 1 / 16),
        ("1TiB", 2**20),
    ],
)
def test_mem_limit_takes_its_unit(text, mib):
    assert dataset_fit.parse_mem_limit(text) == pytest.approx(mib)


@pytest.mark.parametrize("text", ["", "12XB", "-1GiB", "0", "0GiB", "1.2.3G", "GiB", "nan"])
def test_a_bad_mem_limit_is_one_line(text):
    with pytest.raises(UsageError, match="--mem-limit"):
        dataset_fit.parse_mem_limit(text)


@pytest.mark.parametrize(
    "argv,env,said",
    [
        (["scan", "--mem-limit", "12XB"], None, "--mem-limit 12XB: give the memory the dataset may use"),
        (["probe", "loader", "--mem-limit", "0MiB"], None, "--mem-limit 0MiB: the memory must be more than 0"),
        (["scan"], "lots", "YOLOPROF_MEM_LIMIT=lots: give the memory the dataset may use"),
    ],
)
def test_the_cli_refuses_a_bad_mem_limit_with_exit_2(argv, env, said, monkeypatch, capsys, tmp_path):
    if env is not None:
        monkeypatch.setenv("YOLOPROF_MEM_LIMIT", env)
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
    assert not (tmp_path / "runs").exists()  # refused before any folder was made


def _cgroup_v2(root: Path, limit: str, current: int, file: int) -> Path:
    (root / "job").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    (root / "memory.max").write_text("max\n")
    (root / "job" / "memory.max").write_text(limit + "\n")
    (root / "job" / "memory.current").write_text(f"{current}\n")
    (root / "job" / "memory.stat").write_text(f"anon 1\nfile {file}\nkernel 2\n")
    proc = root.parent / "proc_cgroup"
    proc.write_text("0::/job\n")
    return proc


def test_the_cgroup_limit_counts_its_file_pages_as_spare(tmp_path):
    # 4 GiB limit, 3 GiB used of which 1 GiB is page cache: 4 - 3 + 1 = 2 GiB spare
    proc = _cgroup_v2(tmp_path / "cg", str(4 * 2**30), 3 * 2**30, 2**30)
    assert host_memory.cgroup_spare(tmp_path / "cg", proc) == (4096.0, 2048.0)
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm" / "job1").mkdir(parents=True)
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text(f"{8 * 2**30}\n")  # the parent binds too
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text(f"{7 * 2**30}\n")
    (v1 / "memory" / "slurm" / "job1" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # none
    (proc1 := tmp_path / "proc1").write_text("4:memory:/slurm/job1\n1:cpu:/\n")
    assert host_memory.cgroup_spare(v1, proc1) == (8192.0, 1024.0)
    (proc1).write_text("1:cpu:/\n")
    assert host_memory.cgroup_spare(v1, proc1) == (None, None)  # no memory controller: no limit known


def test_the_budget_is_the_override_else_the_smaller_of_psutil_and_the_cgroup(monkeypatch):
    monkeypatch.setattr(environment, "available_ram_mib", lambda: 20000.0)
    monkeypatch.setattr(host_memory, "cgroup_spare", lambda: (8192.0, 3000.0))
    b = host_memory.budget()
    assert (b.available_mib, b.source, b.psutil_available_mib, b.cgroup_limit_mib) == (
        3000.0,
        "cgroup",
        20000.0,
        8192.0,
    )
    monkeypatch.setattr(host_memory, "cgroup_spare", lambda: (None, None))
    assert (host_memory.budget().available_mib, host_memory.budget().source) == (20000.0, "psutil")
    b = host_memory.budget(64.0, "64MiB")
    assert (b.available_mib, b.source, b.override, b.psutil_available_mib) == (64.0, "override", "64MiB", 20000.0)


# --- the fit test ------------------------------------------------------------------------------------


def test_the_dataset_fits_in_80_percent_of_the_spare_memory():
    d = data()  # 1000 MiB of train and val images
    assert dataset_fit.decide(d, budget(1250.0), 128, 2).fits is True  # 1000 <= 0.8 x 1250
    f = dataset_fit.decide(d, budget(1249.0), 128, 2)
    assert f.fits is False and f.epoch_bytes == 1000 * MIB and f.source == "override"
    # cache=ram: 10000 images x 128 x 128 x 3 bytes = 468.75 MiB a rank, 2 ranks
    assert f.ram_copies_mib == pytest.approx(2 * 10000 * 128 * 128 * 3 / MIB)
    assert f.ram_fits is True and dataset_fit.decide(d, budget(1000.0), 128, 2).ram_fits is False  # 937.5 > 800
    unknown = dataset_fit.decide(d, None, 128, 2)
    assert unknown.fits is None and "no memory reading" in unknown.why
    assert dataset_fit.decide(data(train_bytes=None), budget(10.0), 128, 2).fits is None


def test_a_scan_folder_keeps_the_memory_the_decision_used(cpu_scan_copy):
    meta = read_json(cpu_scan_copy / "scan.json", ScanMeta)
    assert meta.memory is None and meta.dataset.train_bytes is None  # recorded before the fit test: it still loads
    out = pipeline.collect(cpu_scan_copy)
    assert out.dataset_fit.fits is None and out.memory_line.startswith("Whether the dataset fits in memory is n/a")
    meta.memory, meta.dataset.train_bytes, meta.dataset.val_bytes = budget(1.0), 2 * MIB, MIB // 2
    assert from_dict(ScanMeta, json.loads(json.dumps(to_dict(meta)))) == meta  # round-trips through JSON
    write_json(cpu_scan_copy / "scan.json", meta)
    first = pipeline.write_all(cpu_scan_copy)
    again = pipeline.collect(cpu_scan_copy)  # what `yoloprof report DIR` rebuilds from: the same verdict
    assert first.memory_line == again.memory_line and first.dataset_fit.fits is False
    assert first.memory_line.startswith(
        "The dataset's 2.5 MiB of images (train and val) do not fit in the 1.0 MiB "
        "this machine can spare (--mem-limit; 80% of it for the page cache)"
    )
    # the fixture's loader points predate the cold probe: the epoch stays at the warm rate, named as a lower bound
    assert "the cold read is n/a: not measured by this version of the probe" in first.memory_line
    p = first.predictions[first.best.trial_id]
    assert p.cold_img_per_s is None and any("lower bound" in m for m in p.parts_missing)
    assert first.memory_line in (cpu_scan_copy / "report.html").read_text().replace("&#39;", "'")


# --- epochs at the cold rate --------------------------------------------------------------------------


RP = RunPlan(epochs=10, close_mosaic=0, warmup_epochs=0)


def test_the_steps_run_at_the_lower_of_the_trials_rate_and_the_cold_rate():
    warm = epoch.predict(trial(), None, None, RP)
    cold = epoch.predict(trial(), None, None, RP, cold=(40.0, 36.0, 44.0))
    assert warm.steps_s == pytest.approx(32 * 16 / 100) and warm.cold_img_per_s is None
    assert cold.steps_s == pytest.approx(32 * 16 / 40) and cold.cold_img_per_s == 40.0
    assert (cold.epoch_s_low, cold.epoch_s_high) == pytest.approx((512 / 44, 512 / 36))  # the cold band binds
    assert cold.epoch_s_warm == pytest.approx(warm.epoch_s)
    assert cold.run_h * 3600 == pytest.approx(10 * 512 / 40)
    above = epoch.predict(trial(), None, None, RP, cold=(400.0, 380.0, 420.0))  # storage keeps up: no change
    assert above.steps_s == pytest.approx(warm.steps_s) and above.cold_img_per_s == 400.0
    straddle = epoch.predict(trial(), None, None, RP, cold=(105.0, 85.0, 125.0))  # bound by bound, the lower
    assert straddle.steps_s == pytest.approx(512 / 100)
    assert (straddle.epoch_s_low, straddle.epoch_s_high) == pytest.approx((512 / 110, 512 / 85))
    blind = epoch.predict(trial(), None, None, RP, cold=(40.0, None, None))  # no interval: no band, not a tight one
    assert blind.steps_s == pytest.approx(512 / 40) and blind.epoch_s_low is None
    unknown = epoch.predict(trial(), None, None, RP, cold="the cold read is n/a: eviction refused")
    assert unknown.steps_s == pytest.approx(warm.steps_s) and unknown.cold_img_per_s is None
    assert any("eviction refused" in m and "lower bound" in m for m in unknown.parts_missing)


def test_each_trial_meets_the_cold_point_of_its_own_settings():
    loader = LoaderCeiling(
        "/d",
        128,
        "off",
        [
            point(0, 300.0, 30.0, (25.0, 35.0)),
            point(2, 500.0, 60.0, (50.0, 70.0)),
            point(2, 520.0, 90.0, (80.0, 100.0), cache="disk"),
        ],
    )
    results = [
        trial("a", K0),
        trial("b", K2),
        trial("c", Knobs(16, 2, False, False, "disk", "default")),
        trial("d", Knobs(16, 2, False, False, "ram", "default")),
        trial("e", Knobs(16, 4, False, False, "off", "default")),
    ]
    assert dataset_fit.caps(results, dataset_fit.decide(data(), budget(99999.0), 128, 2), loader) == {}  # fits
    caps = dataset_fit.caps(results, dataset_fit.decide(data(), budget(100.0), 128, 2), loader)
    assert caps["a"] == (30.0, 25.0, 35.0) and caps["b"] == (60.0, 50.0, 70.0) and caps["c"] == (90.0, 80.0, 100.0)
    assert "d" not in caps  # cache=ram reads no file after set-up
    assert caps["e"].startswith("the cold read at workers 4, cache off on 2 rank(s) was not measured")
    one_rank = trial("f", K2)
    one_rank.world_size = 1
    assert isinstance(dataset_fit.cold_point(one_rank, loader), str)  # measured on 2 ranks, not 1


def test_the_memory_sentence_gives_the_numbers():
    loader = LoaderCeiling("/d", 128, "off", [point(2, 500.0, 60.0, (50.0, 70.0), resident_frac_evicted=0.0)])
    best = trial("b", K2)
    fit = dataset_fit.decide(data(), budget(1024.0), 128, 2)
    p = epoch.predict(best, None, None, RP, cold=(60.0, 50.0, 70.0))
    assert dataset_fit.line(fit, best, loader, p) == (
        "The dataset's 1000.0 MiB of images (train and val) do not fit in the 1.0 GiB this machine can spare "
        "(--mem-limit; 80% of it for the page cache), so every epoch reads them from storage: the loaders deliver "
        "60 img/s cold against 500 warm (workers 2, cache off), and an epoch of b takes 8.5 s at the cold rate "
        "(5.1 s warm)."
    )  # 512 images / 60 img/s and / 100 img/s
    blind = LoaderCeiling("/d", 128, "off", [point(2, 500.0, 60.0, (50.0, 70.0))])  # evicted, not verified
    assert "(workers 2, cache off; the eviction unverified: mincore shows" in dataset_fit.line(fit, best, blind, p)
    fits = dataset_fit.decide(data(), budget(4096.0, "psutil"), 128, 2)
    assert dataset_fit.line(fits, best, loader, None) == (
        "The dataset's 1000.0 MiB of images (train and val) fit in the 4.0 GiB this machine can spare (available "
        "memory, psutil; 80% of it for the page cache): after the first epoch they come from the page cache, as in "
        "the trials."
    )
    fast = LoaderCeiling("/d", 128, "off", [point(2, 500.0, 300.0, (280.0, 320.0), resident_frac_evicted=0.0)])
    text = dataset_fit.line(fit, best, fast, epoch.predict(best, None, None, RP, cold=(300.0, 280.0, 320.0)))
    assert text.endswith("above the 100 img/s b trains at: the reads do not slow it.")


def test_a_large_dataset_that_fits_is_not_evicted_and_read_back_per_loader_point():
    big = data(train_bytes=3 * 2**30, val_bytes=0)
    assert dataset_fit.cold_skip(dataset_fit.decide(big, budget(10 * 1024.0), 128, 2)).startswith(
        "not timed: the dataset's 3.0 GiB fit in memory"
    )
    assert dataset_fit.cold_skip(dataset_fit.decide(big, budget(1024.0), 128, 2)) is None  # does not fit: timed
    assert dataset_fit.cold_skip(dataset_fit.decide(data(), budget(10 * 1024.0), 128, 2)) is None  # small: timed


# --- the search ---------------------------------------------------------------------------------------


def test_where_the_data_do_not_fit_workers_are_judged_by_the_cold_rates():
    # warm: flat after workers 2 (+2%); cold: still +60% from 2 to 4
    loader = LoaderCeiling(
        "/d",
        128,
        "off",
        [point(1, 400.0, 50.0), point(2, 500.0, 100.0), point(4, 510.0, 160.0), point(8, 512.0, 165.0)],
    )
    space = Space(
        {
            "batch": [16],
            "workers": [0, 1, 2, 4, 8],
            "amp": [False],
            "pin_memory": [False],
            "cache": ["off", "disk"],
            "nccl": ["default"],
        }
    )
    hw = Hardware("cpu", 2, [], 16, 0)
    warm = prune(space, Ceilings(loader=loader), hw)
    assert warm.space.values["workers"] == [0, 1, 2]  # warm: 4 adds under 5% over 2
    cold = prune(space, Ceilings(loader=loader), hw, cold=True)
    assert cold.space.values["workers"] == [0, 1, 2, 4]  # cold: 8 adds 3% over 4
    cut = next(d for d in cold.decisions if d.kind == "pruned" and d.value == "8")
    assert "cold input ceiling stops growing at workers 4 (160 img/s" in cut.reason
    assert any(d.knob == "cache" and d.value == "disk" and d.kind == "kept" for d in cold.decisions)
    blind = LoaderCeiling("/d", 128, "off", [point(2, 500.0, None), point(4, 501.0, None)])
    none = prune(space, Ceilings(loader=blind), hw, cold=True)
    assert none.space.values["workers"] == [0, 1, 2, 4, 8]
    assert any(d.knob == "workers" and "cold rates are n/a" in d.reason for d in none.decisions)


def test_a_change_wins_on_its_cold_rate_where_storage_bounds_the_epochs():
    loader = LoaderCeiling(
        "/d",
        128,
        "off",
        [point(0, 300.0, 30.0, (25.0, 35.0)), point(2, 500.0, 60.0, (50.0, 70.0)), point(4, 500.0, 64.0, (55.0, 73.0))],
    )
    k4 = Knobs(16, 4, False, False, "off", "default")
    rs = [trial("w0", K0, 100.0), trial("w2", K2, 100.0), trial("w4", k4, 100.0)]  # the trials tie warm
    assert dataset_fit.cold_bound(rs[1], loader) and dataset_fit.cold_beats(rs, "w2", "w0", loader) is True
    assert dataset_fit.cold_beats(rs, "w4", "w2", loader) is False  # 55-73 overlaps 50-70: not beyond the noise
    fast = LoaderCeiling(
        "/d", 128, "off", [point(0, 300.0, 300.0, (290.0, 310.0)), point(2, 500.0, 400.0, (390.0, 410.0))]
    )
    assert not dataset_fit.cold_bound(rs[0], fast)
    assert dataset_fit.cold_beats(rs, "w2", "w0", fast) is None  # storage bounds neither: the trials decide


def test_summed_rates_of_ranks_and_their_interval():
    flat = intervals.summed_throughput([([2] * 12, [10.0] * 12), ([2] * 12, [20.0] * 12)])
    assert flat.estimate == pytest.approx(200 + 100) and (flat.low, flat.high) == pytest.approx((300.0, 300.0))
    # rank 0 alternates 10/30 ms blocks of 4 batches; rank 1 steady: blocks sum to 200+100 and 66.7+100
    rank0 = [10.0] * 4 + [30.0] * 4 + [10.0] * 4 + [30.0] * 4
    iv = intervals.summed_throughput([([2] * 16, rank0), ([2] * 16, [20.0] * 16)])
    blocks = [300.0, 2 / 0.030 + 100, 300.0, 2 / 0.030 + 100]
    mean = sum(blocks) / 4
    sd = (sum((b - mean) ** 2 for b in blocks) / 3) ** 0.5
    assert iv.estimate == pytest.approx(32 / 0.320 + 100)
    assert iv.high - iv.estimate == pytest.approx(intervals.t975(3) * sd / 2)
    assert intervals.summed_throughput([([2] * 8, [10.0] * 8)]).high == float("inf")  # 2 blocks: no interval


def test_loader_points_round_trip_and_old_ones_load():
    p = point(
        2,
        500.0,
        60.0,
        (50.0, 70.0),
        cache="disk",
        cold_batches=20,
        evicted_files=64,
        evicted_bytes=10**6,
        resident_frac_evicted=0.0,
        resident_frac_warm=1.0,
        cold_error=None,
    )
    c = LoaderCeiling("/d", 128, "off", [p])
    assert from_dict(LoaderCeiling, json.loads(json.dumps(to_dict(c)))) == c
    old = {
        "workers": 2,
        "workers_effective": 2,
        "ranks": 2,
        "batch_per_rank": 8,
        "batches": 20,
        "img_per_s_rank": 1.0,
        "img_per_s_machine": 2.0,
        "cpu_pct": 50.0,
    }
    o = from_dict(LoaderPoint, old)
    assert o.img_per_s_machine_cold is None and o.cold_error is None and o.cache is None


# --- the eviction, on real files ----------------------------------------------------------------------


def _files(folder: Path, n: int = 6, size: int = 64 * 1024) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        f = folder / f"im{i}.jpg"
        f.write_bytes(os.urandom(size))  # written moments ago: dirty pages, which DONTNEED alone keeps
        out.append(str(f))
    return out


def test_eviction_leaves_no_page_of_the_files_cached(tmp_path):
    files = _files(tmp_path)
    assert all(page_cache.resident_pages(f) == (16, 16) for f in files)  # 64 KiB = 16 pages, all cached
    ev = page_cache.evict(files)
    assert (ev.files, ev.bytes, ev.errors) == (6, 6 * 64 * 1024, [])
    assert ev.resident_frac_after == 0.0 and all(page_cache.resident_pages(f) == (0, 16) for f in files)
    assert page_cache.read_back(files) == 6 * 64 * 1024
    assert page_cache.resident_frac(files) == 1.0
    assert page_cache.sample(list(range(10)), 4) == [0, 2, 5, 7]


def test_pages_that_survive_the_first_advice_get_a_second_pass_over_every_file(tmp_path, monkeypatch):
    """A page the kernel held back (a per-CPU batch, writeback) leaves residue in the sample: every file is
    advised once more, not only the sampled ones, and the figure kept is the one read after that pass."""
    files = _files(tmp_path)
    advised, readings = [], iter([0.03, 0.0])
    monkeypatch.setattr(page_cache, "_drop", lambda fd: advised.append(fd))
    monkeypatch.setattr(page_cache, "resident_frac", lambda paths, limit: next(readings))
    ev = page_cache.evict(files)
    assert len(advised) >= 2 * len(files) and ev.resident_frac_after == 0.0
    assert (ev.files, ev.bytes) == (6, 6 * 64 * 1024)  # counted once, not per pass


class _Img:
    shape = (1, 3, 8, 8)


class _Loader:
    """A loader over real files, no workers: a batch reads its file when asked (as workers=0 does)."""

    num_workers, prefetch_factor = 0, None

    def __init__(self, files: list[str]):
        self.dataset = type("D", (), {"im_files": files, "npy_files": [Path(f).with_suffix(".npy") for f in files]})()
        self.files, self.seen = files, []

    def __len__(self):
        return len(self.files)

    def forever(self):
        while True:
            for f in self.files:
                self.seen.append((f, page_cache.resident_pages(f)[0]))  # cached pages when the loader asks
                Path(f).read_bytes()
                yield {"img": _Img()}


def test_every_cold_batch_reads_a_file_the_page_cache_had_lost(tmp_path):
    files = _files(tmp_path / "images", n=8)
    loader = _Loader(files)
    it = loader.forever()
    for _ in range(3):  # warm-up and a warm window: 3 of 8 batches of this pass consumed
        next(it)
    out = loader_bench.cold_window(it, loader, "off", batches=4, consumed=3, rank=-1, grouped=False)
    assert out["evicted_files"] == 8 and out["resident_frac_evicted"] == 0.0 and "cold_error" not in out
    cold = loader.seen[3:]
    assert len(out["cold_batch_ms"]) == 4 and out["cold_batch_images"] == [1] * 4
    assert [f for f, _ in cold] == files[3:7] and all(pages == 0 for _, pages in cold)  # each read from storage
    assert page_cache.resident_frac(files) == 1.0  # read back afterwards: the next probe finds them cached


def test_a_window_that_would_cross_into_a_new_pass_starts_there(tmp_path):
    files = _files(tmp_path / "images", n=8)
    loader = _Loader(files)
    it = loader.forever()
    for _ in range(6):
        next(it)
    out = loader_bench.cold_window(it, loader, "off", batches=4, consumed=6, rank=-1, grouped=False)
    # 2 batches left in this pass: the window moves to the next one, where 4 fit and no file is read twice
    assert [f for f, _ in loader.seen[8:]] == files[:4] and all(p == 0 for _, p in loader.seen[8:])
    assert len(out["cold_batch_ms"]) == 4


def test_where_the_eviction_does_not_take_the_cold_rate_is_not_measured(tmp_path, monkeypatch):
    files = _files(tmp_path / "images", n=4)
    loader = _Loader(files)
    monkeypatch.setattr(page_cache, "evict", lambda paths: page_cache.Eviction(4, 4 * 65536, [], 0.93))  # tmpfs-like
    out = loader_bench.cold_window(loader.forever(), loader, "off", batches=2, consumed=0, rank=-1, grouped=False)
    assert "cold_batch_ms" not in out and out["cold_error"].startswith("the file system kept 93% of the files' pages")
    assert loader_bench.cold_window(iter(()), loader, "ram", 2, 0, -1, False)["cold_error"].startswith("cache=ram")
    busy = _Loader(files)
    busy.num_workers, busy.prefetch_factor = 1, 4  # 4 batches in flight: the whole pass of 4
    assert (
        "no longer than the 4 batches in flight"
        in loader_bench.cold_window(iter(()), busy, "off", 2, 0, -1, False)["cold_error"]
    )


# --- for real on CPU ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_cold_probe_for_real_with_a_memory_limit_below_the_dataset(tmp_path, capsys, monkeypatch):
    """`yoloprof probe loader --mem-limit` on 64 small images (2 ranks, batch 2: 16 batches a pass per rank):
    both rates with their intervals, the eviction checked by mincore, then the fit decided with that limit and
    the epoch priced at the cold rate."""
    from yoloprof.data.dataset import SyntheticSpec, generate
    from yoloprof.data import datainfo
    from yoloprof.scan import request

    ds = generate(tmp_path / "ds", SyntheticSpec(images=64, width=160, height=120, val_images=4, seed=3))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "probe"
    assert (
        cli.main(
            [
                "probe",
                "loader",
                "--device",
                "cpu",
                "--nproc",
                "2",
                "--data",
                str(ds),
                "--imgsz",
                "64",
                "--batch",
                "4",
                "--workers",
                "0",
                "--cache",
                "off",
                "--steps",
                "12",
                "--warmup",
                "2",
                "--mem-limit",
                "64KiB",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "does not fit, epochs read it from storage" in said and "Input ceiling" in said
    c = read_json(out / "loader.json", LoaderCeiling)
    (p,) = c.points
    assert p.status == "ok" and p.cold_error is None, p.cold_error
    raw = [json.loads((out / "raw" / "loader-w0-pinoff" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert p.batches_per_epoch == 16 and p.cold_batches == 12  # 3 warm-up + 12 read: the window moved to the next pass
    assert p.img_per_s_machine_cold == pytest.approx(sum(x["cold_img_per_s"] for x in raw))
    for x in raw:  # each rank's cold rate is its images over its timed batches, nothing else
        assert x["cold_img_per_s"] == pytest.approx(sum(x["cold_batch_images"]) / (sum(x["cold_batch_ms"]) / 1e3))
    assert p.img_per_s_machine_ci_low <= p.img_per_s_machine <= p.img_per_s_machine_ci_high
    assert p.img_per_s_machine_cold_ci_low <= p.img_per_s_machine_cold <= p.img_per_s_machine_cold_ci_high
    info = datainfo.inspect(ds)
    assert p.evicted_files == 64 and p.evicted_bytes == info.train_bytes  # the train images, every one
    # mincore: all there before; after, at most the probe's bar (a page or two the kernel held in a batch or under
    # writeback can survive the advice on a busy machine: 1 of 129 pages in one CI run)
    assert p.resident_frac_evicted <= loader_bench.MAX_RESIDENT_AFTER_EVICT and p.resident_frac_warm == 1.0

    fit = dataset_fit.decide(info, request.resolve_memory(request.ScanRequest(mem_limit="64KiB")), 64, 2)
    assert fit.fits is False and fit.source == "override" and fit.available_mib == 1 / 16
    fast = trial(
        "t", K0, rate=4 * p.img_per_s_machine_cold, ci=(3.5 * p.img_per_s_machine_cold, 4.5 * p.img_per_s_machine_cold)
    )
    cap = dataset_fit.caps([fast], fit, c)["t"]
    pred = epoch.predict(fast, None, info, RP, cold=cap)
    assert pred.cold_img_per_s == p.img_per_s_machine_cold
    assert pred.steps_s == pytest.approx(32 * 16 / p.img_per_s_machine_cold)  # the cold rate, not the trial's
    assert pred.epoch_s_warm == pytest.approx(32 * 16 / fast.img_per_s)
    assert "at the cold rate" in dataset_fit.line(fit, fast, c, pred)


def test_the_input_ceiling_times_cache_disk_too_where_the_data_do_not_fit_and_the_scan_may_try_it():
    from types import SimpleNamespace

    from yoloprof.scan.orchestrate import disk_too

    def ctx(cache, strategy="grid", given=None, mib=100.0):
        return SimpleNamespace(
            plan=SimpleNamespace(axes=SimpleNamespace(cache=cache)),
            strategy=strategy,
            given=given or {},
            fit=lambda: dataset_fit.decide(data(), budget(mib), 128, 2),
        )

    assert disk_too(ctx(["off"], "auto")) == ["disk"]  # auto's space holds cache disk
    assert disk_too(ctx(["off"], "auto", {"cache": ["off"]})) == []  # the user left it out
    assert disk_too(ctx(["off", "disk"])) == ["disk"] and disk_too(ctx(["off"])) == []  # grid: only if listed
    assert disk_too(ctx(["off"], "auto", mib=99999.0)) == []  # fits: the warm figures hold


def test_the_search_sees_storage_bound_trials_as_input_bound():
    from yoloprof.scan import auto

    loader = LoaderCeiling("/d", 128, "off", [point(0, 300.0, 30.0, (25.0, 35.0)), point(2, 500.0, 60.0, (50.0, 70.0))])
    judge, bound = auto.cold_aware(loader)
    rs = [trial("w0", K0, 100.0), trial("w2", K2, 100.0)]
    assert bound(rs[0]) == "input" and judge(rs, "w2", "w0") is True and judge(rs, "w0", "w2") is False
    fast = LoaderCeiling(
        "/d", 128, "off", [point(0, 300.0, 300.0, (290.0, 310.0)), point(2, 500.0, 400.0, (390.0, 410.0))]
    )
    judge, bound = auto.cold_aware(fast)  # storage keeps up: the trials' own figures and noise test decide
    assert bound(rs[0]) == auto.bottleneck(rs[0]) and judge(rs, "w2", "w0") == auto.beats(rs, "w2", "w0")
