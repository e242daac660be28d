"""Positions follow throughput; each bottleneck rule fires on its evidence and only then."""

from __future__ import annotations

from dataclasses import replace

import pytest

from yoloprof.analysis import ranking
from yoloprof.records import Knobs, RankStat, TrialResult

K = Knobs(16, 2, True, True, "off", "default")


def result(tid="t", status="ok", img=100.0, data=0.02, comm=0.02, mem=None, total=None, busy=(50.0, 51.0)):
    """A hand-built trial; its batch follows its id, so trials with different ids are different configurations."""
    ranks = [RankStat(i, 60.0, b, 1.0, 1.0, mem) for i, b in enumerate(busy)]
    knobs = replace(K, batch=16 + sum(map(ord, tid)) % 1000)
    return TrialResult(
        tid,
        status,
        knobs,
        len(busy),
        "cuda",
        img_per_s=img,
        data_wait_frac=data,
        comm_frac=comm,
        peak_mem_mib=mem,
        device_mem_total_mib=total,
        ranks=ranks,
        rank_skew=max(busy) / min(busy) - 1,
    )


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(), "compute"),
        (dict(data=0.38), "input"),
        (dict(comm=0.25), "communication"),
        (dict(data=0.15, comm=0.30), "communication"),  # the larger share wins
        (dict(data=0.30, comm=0.15), "input"),
        (dict(mem=75000.0, total=81559.0), "memory"),
        (dict(busy=(50.0, 70.0)), "straggler"),
        (dict(status="oom", img=None), "memory"),
    ],
)
def test_bottleneck_rules(kwargs, expected):
    b, evidence = ranking.classify(result(**kwargs))
    assert b == expected
    assert evidence


def test_thresholds_are_limits_not_guesses():
    assert ranking.classify(result(data=ranking.INPUT_FRAC - 0.001))[0] == "compute"
    assert ranking.classify(result(data=ranking.INPUT_FRAC))[0] == "input"
    b, ev = ranking.classify(result(busy=(50.0, 50.0 * (1 + ranking.STRAGGLER_SKEW) + 1)))
    assert b == "straggler" and "rank 1" in ev


def test_positions_are_by_throughput_and_failed_trials_have_none():
    rs = [result("a", img=50), result("b", img=150), result("c", status="error", img=None), result("d", img=100)]
    rk = ranking.rank_trials(rs)
    pos = {v.trial_id: v.position for v in rk.verdicts}
    assert pos == {"b": 1, "d": 2, "a": 3, "c": None}
    assert rk.best_trial_id == "b"
    assert [v.trial_id for v in rk.verdicts] == ["b", "d", "a", "c"]
    assert "b (" in ranking.headline(rs, rk) and "3.00x the slowest" in ranking.headline(rs, rk)


def test_headline_when_nothing_finished():
    rs = [result("a", status="timeout", img=None)]
    rs[0].error = "timed out after 30 s"
    text = ranking.headline(rs, ranking.rank_trials(rs))
    assert text.startswith("No trial finished") and "timed out" in text


def test_tested_effects_and_the_path_to_the_best_trial():
    from dataclasses import replace as rep

    from yoloprof.analysis import advice

    def t(tid, img, data, **k):
        r = result(tid, img=img, data=data)
        r.knobs = rep(K, **k)
        return r

    rs = [
        t("a", 100, 0.38, workers=4),
        t("b", 131, 0.04, workers=8),
        t("c", 150, 0.03, workers=8, batch=32),
        t("d", 90, 0.40, workers=4, amp=False),
    ]
    eff = advice.effects(rs)
    texts = [e.text for e in eff]
    assert "workers 4 -> 8: +31% images/s, data wait 38% -> 4% (a -> b)" in texts
    assert any(
        e.knob == "batch" and e.before == "16" and e.after == "32" and e.gain == pytest.approx(150 / 131 - 1)
        for e in eff
    )
    assert any(e.knob == "amp" and e.before == "off" and e.from_trial == "d" for e in eff)
    assert all(len({e.from_trial, e.to_trial}) == 2 for e in eff) and not any(
        e.from_trial == "a" and e.to_trial == "c" for e in eff
    )
    path = advice.path_to_best(rs[2], rs[0], rs)
    assert path[0].startswith("batch 16 -> 32: +15% images/s") and "(b -> c)" in path[0]
    assert path[1].startswith("workers 4 -> 8: untested alone")


def test_untested_suggestions_come_with_the_scan_that_tests_them():
    from yoloprof.analysis import advice

    best = replace(result("b", data=0.3), knobs=K)
    out = advice.untested(best, "input", [best], "cuda", workers_cap=16)
    assert out[0].flags == "--workers 2,4" and "none above 2 tried" in out[0].text
    cmd = advice.next_scan(
        ["yoloprof", "scan", "--gpus", "0,1", "--workers", "2", "--out", "x", "--batch=16"], out[0].flags
    )
    assert cmd == "yoloprof scan --gpus 0,1 --batch=16 --workers 2,4"
    comm = advice.untested(best, "communication", [best], "cuda", workers_cap=16)
    assert [u.flags for u in comm] == ["--batch 16,32", "--nccl default,ring,tree"]


def test_a_straggler_whose_own_allreduce_is_long_is_communication_bound_too():
    # rank 1 works 70 ms to rank 0's 50: a straggler. Where rank 1 itself, which waits for nobody, still
    # waits in AllReduce, the link costs the step on its own; the larger of the two costs comes first.
    r = result(busy=(50.0, 70.0))
    assert ranking.bounds(r)[0] == ["straggler"]  # 1 ms of 60 in AllReduce: under COMM_FRAC
    r.ranks[1].comm_wait_ms_p50 = 40.0  # 67% of its step, and more than the 20 ms of skew
    names, evidence = ranking.bounds(r)
    assert names == ["communication", "straggler"]
    assert "rank 1 itself waits 40 ms (67% of its step" in evidence
    r.ranks[1].comm_wait_ms_p50 = 10.0  # 17%: a bound, but the skew costs more
    assert ranking.bounds(r)[0] == ["straggler", "communication"]
    assert ranking.rank_trials([r]).verdicts[0].label == "straggler + communication"


def test_a_tie_on_too_few_degrees_of_freedom_recommends_the_fastest_not_the_cheapest():
    """Seen in search_quality on a 45-configuration space: one repeat pair (1 df) made every interval 12.7
    spreads wide, everything tied, and the least memory picked the defaults at 0.75x of the fastest."""

    def trial(tid, batch, img, mem, repeat_of=None):
        k = Knobs(batch, 0, False, False, "off", "default")
        return TrialResult(
            tid,
            "ok",
            k,
            2,
            "cpu",
            img_per_s=img,
            img_per_s_ci_low=0.98 * img,
            img_per_s_ci_high=1.02 * img,
            img_per_s_ci_method="batch means",
            peak_mem_mib=mem,
            repeat_of=repeat_of,
        )

    fast, again, slow = (
        trial("t02", 64, 125.0, 2000.0),
        trial("t03", 64, 118.0, 2000.0, "t02"),
        trial("t01", 16, 92.0, 800.0),
    )
    rk = ranking.rank_trials([slow, fast, again])
    assert rk.run_to_run_df == 1 and set(rk.tied) == {"t02", "t01"}  # the 1-df interval swallows a 26% gap
    assert rk.recommended_trial_id == "t02" and "rests on 1 df" in rk.recommendation_reason
    # with 3 df the tie is the trials' own, and the cheaper one is recommended as before
    more = [
        trial("t04", 64, 121.0, 2000.0, "t02"),
        trial("t05", 16, 91.0, 800.0, "t01"),
        trial("t06", 16, 93.0, 800.0, "t01"),
    ]
    settled = ranking.rank_trials([slow, fast, again, *more])
    assert settled.run_to_run_df == 4 and "rests on" not in (settled.recommendation_reason or "")


def test_on_too_few_df_what_gives_up_nothing_still_comes_first():
    def trial(tid, batch, img, mem, deterministic=True, repeat_of=None):
        k = Knobs(batch, 0, False, False, "off", "default", deterministic)
        return TrialResult(
            tid,
            "ok",
            k,
            2,
            "cpu",
            img_per_s=img,
            img_per_s_ci_low=0.98 * img,
            img_per_s_ci_high=1.02 * img,
            img_per_s_ci_method="batch means",
            peak_mem_mib=mem,
            repeat_of=repeat_of,
        )

    nondet, again = trial("t03", 64, 130.0, 2000.0, False), trial("t04", 64, 122.0, 2000.0, False, "t03")
    det, light = trial("t02", 64, 124.0, 2000.0), trial("t01", 16, 92.0, 800.0)
    rk = ranking.rank_trials([light, det, nondet, again])
    assert rk.run_to_run_df == 1 and rk.fastest_trial_id == "t03"
    assert rk.recommended_trial_id == "t02"  # keeps determinism, then the fastest: not the lightest
    assert "keeps deterministic training" in rk.recommendation_reason and "rests on 1 df" in rk.recommendation_reason
