"""Every record survives a JSON round trip; damaged files give a clear error."""

from __future__ import annotations

import json

import pytest

from yoloprof.records import (
    Breakdown,
    BucketSample,
    DatasetInfo,
    Environment,
    GpuInfo,
    Knobs,
    RankEnd,
    RankInfo,
    RankStat,
    Ranking,
    RecordError,
    ScanMeta,
    StepSample,
    TrialResult,
    TrialSpec,
    Verdict,
    from_dict,
    read_json,
    to_dict,
    write_json,
)

KNOBS = Knobs(batch=16, workers=2, amp=True, pin_memory=False, cache="ram", nccl="ring")


def roundtrip(record):
    cls = type(record)
    again = from_dict(cls, json.loads(json.dumps(to_dict(record))))
    assert again == record
    return again


def test_trial_spec_roundtrip():
    spec = TrialSpec(
        "t01-b16-w2-amp",
        KNOBS,
        2,
        "cuda",
        [0, 3],
        "yolo11n.yaml",
        "/d/data.yaml",
        640,
        "SGD",
        5,
        20,
        {"NCCL_ALGO": "Ring", "OMP_NUM_THREADS": "8"},
    )
    again = roundtrip(spec)
    assert isinstance(again.knobs, Knobs) and again.total_steps == 25


def test_step_sample_roundtrip_with_buckets_and_nones():
    s = StepSample(
        rank=1,
        step=7,
        epoch=0,
        warmup=False,
        t_end_s=1.5,
        images=8,
        step_ms=120.0,
        data_wait_ms=3.0,
        h2d_ms=None,
        forward_ms=40.0,
        backward_ms=60.0,
        comm_wait_ms=None,
        optimizer_ms=0.0,
        other_ms=None,
        optimizer_stepped=False,
        comm_ms=12.5,
        buckets=[BucketSample(0, 9306532, 10.0), BucketSample(1, 1055104, None)],
        timing="cuda_event",
    )
    again = roundtrip(s)
    assert isinstance(again.buckets[0], BucketSample) and again.buckets[1].allreduce_ms is None


def test_result_and_ranking_roundtrip():
    r = TrialResult(
        "t1",
        "ok",
        KNOBS,
        2,
        "cpu",
        img_per_s=31.0,
        breakdown=Breakdown(1, 2, 3, 4, None, 0, 1, 11),
        ranks=[RankStat(0, 10, 8, 1, None, 800.0)],
        bucket_sizes_bytes=[1, 2],
        stderr_tail=["x"],
    )
    again = roundtrip(r)
    assert isinstance(again.breakdown, Breakdown) and isinstance(again.ranks[0], RankStat)
    roundtrip(Ranking([Verdict("t1", 1, "input", "data wait 40%")], "t1"))
    roundtrip(RankInfo(0, 0, 2, 10, "h", "cpu", "cpu", "gloo", 8, 8, 2, 2, False, False, 512, 64, 25.0, 1, 0.0))
    roundtrip(RankEnd(0, "oom", 1.0, "cuda_reserved", 2.0, 80000.0, 3, "OutOfMemoryError: x", 5.0))


def test_scan_meta_roundtrip():
    env = Environment(
        "h",
        "linux",
        "3.11",
        2,
        24000.0,
        "2.14.1",
        "8.4.190",
        "13.0",
        "2.30.7",
        "580.1",
        [GpuInfo(0, "NVIDIA H100", 81559.0)],
        ["batch", "workers"],
        {"NCCL_DEBUG": "INFO"},
    )
    meta = ScanMeta(
        "0.1.0",
        1.0,
        ["yoloprof", "scan"],
        "cuda",
        1,
        [0],
        "yolo11n.yaml",
        640,
        "SGD",
        5,
        20,
        DatasetInfo("/d.yaml", 10, 2, ["a", "b"], True, "640x480"),
        {"batch": [16, 32]},
        ["why"],
        ["t01"],
        env,
        ["note"],
    )
    again = roundtrip(meta)
    assert isinstance(again.environment.gpus[0], GpuInfo) and isinstance(again.dataset, DatasetInfo)


def test_unknown_keys_are_ignored_for_forward_compatibility():
    d = to_dict(KNOBS)
    d["a_future_field"] = 1
    assert from_dict(Knobs, d) == KNOBS


def test_write_json_is_atomic_and_corrupt_files_raise_record_error(tmp_path):
    p = tmp_path / "x" / "result.json"
    write_json(p, KNOBS)
    assert read_json(p, Knobs) == KNOBS
    assert [f.name for f in p.parent.iterdir()] == ["result.json"]  # no temp file left behind
    p.write_text(p.read_text()[:20])  # truncated
    with pytest.raises(RecordError, match="corrupt or truncated"):
        read_json(p, Knobs)
    with pytest.raises(RecordError):
        from_dict(Knobs, {"batch": 1})  # required fields missing


def test_deterministic_trials_never_share_a_rank_process():
    """Ultralytics sets CUBLAS_WORKSPACE_CONFIG for deterministic, and cuBLAS reads it once per process."""
    import dataclasses

    from yoloprof.records import Knobs, TrialSpec

    a = TrialSpec("a", Knobs(64, 8, True, True, "off", "default"), 2, "cuda", [0, 1], "m", "/d", 640, "SGD", 1, 1, {})
    b = dataclasses.replace(
        a, trial_id="b", knobs=dataclasses.replace(a.knobs, deterministic=not a.knobs.deterministic)
    )
    c = dataclasses.replace(a, trial_id="c", knobs=dataclasses.replace(a.knobs, batch=128, workers=2))
    assert a.env_key != b.env_key
    assert a.env_key == c.env_key  # batch and workers still share one


def test_the_plots_font_check_never_downloads(monkeypatch):
    """The epoch job times the run's end with plots: the Annotator's font check must not reach the network
    (tests/test_scan_cpu.py's network test saw `getaddrinfo github.com` before this patch)."""
    import ultralytics.utils.downloads as downloads
    import ultralytics.utils.plotting as plotting

    from yoloprof.probes import offline

    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.callbacks as callbacks_pkg

    for mod, name in (
        (plotting, "check_font"),
        (data_utils, "check_font"),
        (trainer_mod, "check_amp"),
        (callbacks_pkg, "add_integration_callbacks"),
    ):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # each patch undone after the test
    monkeypatch.setattr(downloads, "is_url", lambda *a, **k: pytest.fail("a download was tried"))
    offline.patch_ultralytics()
    assert plotting.check_font is offline.font_on_this_machine
    assert offline.font_on_this_machine("NoSuchFont-yoloprof.ttf") is None  # PIL's default font then


def test_a_value_outside_its_literal_set_is_refused_naming_the_field():
    """Literal fields (status, cache, device, backend, timing, ...) read back only the strings they may hold."""
    r = to_dict(TrialResult("t1", "ok", KNOBS, 2, "cpu"))
    with pytest.raises(RecordError, match=r"TrialResult.status: 'finished' is not one of 'ok', 'error'"):
        from_dict(TrialResult, {**r, "status": "finished"})
    with pytest.raises(RecordError, match=r"TrialResult.knobs: Knobs.cache: 'tmpfs' is not one of"):
        from_dict(TrialResult, {**r, "knobs": {**r["knobs"], "cache": "tmpfs"}})
    assert from_dict(TrialResult, {**r, "status": "interrupted"}).status == "interrupted"
    with pytest.raises(RecordError, match="RankInfo.backend: 'mpi'"):
        from_dict(
            RankInfo,
            {
                **to_dict(
                    RankInfo(0, 0, 2, 10, "h", "cpu", "cpu", "gloo", 8, 8, 2, 2, False, False, 512, 64, 25.0, 1, 0.0)
                ),
                "backend": "mpi",
            },
        )
