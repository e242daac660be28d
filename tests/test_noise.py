"""Repeats, pooled run-to-run noise, ties and the recommendation among the tied, on hand-built trials."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from yoloprof.analysis import advice, noise, ranking
from yoloprof.records import Knobs, Ranking, TrialResult, from_dict, to_dict

K = Knobs(16, 2, False, False, "off", "default")


def trial(tid, img, half=0.03, repeat_of=None, mem=900.0, **knobs):
    """A finished trial with a within-run 95% interval of +-half (relative)."""
    return TrialResult(
        tid,
        "ok",
        replace(K, **knobs),
        2,
        "cpu",
        img_per_s=img,
        img_per_s_ci_low=img * (1 - half),
        img_per_s_ci_high=img * (1 + half),
        img_per_s_ci_method="batch means over 5 blocks of 4 steps",
        repeat_of=repeat_of,
        peak_mem_mib=mem,
        data_wait_frac=0.02,
        comm_frac=0.02,
    )


def runs(prefix, mean, spread=0.05, **knobs):
    """Three runs of one configuration at mean * (1 - spread, 1, 1 + spread): relative spread exactly `spread`."""
    first = f"{prefix}a"
    return [
        trial(first, mean * (1 - spread), **knobs),
        trial(f"{prefix}b", mean, repeat_of=first, **knobs),
        trial(f"{prefix}c", mean * (1 + spread), repeat_of=first, **knobs),
    ]


def test_run_to_run_spread_is_pooled_over_repeated_configurations():
    rs = [
        trial("a1", 100.0),
        trial("a2", 110.0, repeat_of="a1"),
        trial("a3", 90.0, repeat_of="a1"),
        trial("b1", 200.0, workers=0),
        trial("b2", 210.0, workers=0, repeat_of="b1"),
        trial("c", 50.0, workers=8),
    ]
    rtr = noise.run_to_run(rs)
    ss = 0.1**2 + 0.1**2 + 2 * (5 / 205) ** 2  # relative deviations from each configuration's mean
    assert rtr.df == 3 and rtr.configs == 2 and rtr.s_rel == pytest.approx(math.sqrt(ss / 3))
    assert rtr.text() == "run-to-run spread 8.4% pooled over 2 repeated configurations (df 3)"
    a = noise.config_of(rs, "a2")
    assert a.trial_ids == ["a1", "a2", "a3"] and a.mean == pytest.approx(100.0)
    half = 3.182 * rtr.s_rel * 100.0 / math.sqrt(3)  # t975(3) s_rel mean / sqrt(k)
    assert (a.low, a.high) == (pytest.approx(100 - half), pytest.approx(100 + half))
    assert a.method.startswith("run-to-run spread 8.4% pooled over 2 repeated configurations (df 3) and batch means")
    c = noise.config_of(rs, "c")  # one run: the run-to-run spread applies to it in full
    assert c.half_rel == pytest.approx(3.182 * rtr.s_rel)
    # results.csv: a run's own interval widened to the run-to-run spread
    low, high = noise.trial_interval(rs[0], rtr)
    assert (low, high) == (pytest.approx(100 * (1 - 3.182 * rtr.s_rel)), pytest.approx(100 * (1 + 3.182 * rtr.s_rel)))


def test_without_repeats_the_within_run_interval_stands_and_says_so():
    rs = [trial("a", 100.0, half=0.04), trial("b", 80.0, workers=0)]
    rtr = noise.run_to_run(rs)
    assert rtr.s_rel is None and rtr.df == 0 and "not measured" in rtr.text()
    a = noise.config_of(rs, "a")
    assert (a.low, a.high) == (pytest.approx(96.0), pytest.approx(104.0))
    assert a.method == "batch means within the run; run-to-run noise not measured"
    assert noise.trial_interval(rs[0], rtr) == (pytest.approx(96.0), pytest.approx(104.0))
    rk = ranking.rank_trials(rs)
    assert rk.run_to_run_rel is None and rk.run_to_run_df == 0
    assert rk.verdicts[0].uncertainty == a.method


def test_a_floor_of_the_within_run_interval():
    # runs agree to 0.1% but each run is only known to +-20%: the mean of 2 is known to +-20%/sqrt(2), not +-0.1%
    rs = [trial("a", 100.0, half=0.2), trial("b", 100.2, half=0.2, repeat_of="a")]
    c = noise.config_of(rs, "a")
    assert c.half_rel == pytest.approx(0.2 / math.sqrt(2))


def test_two_configurations_2pct_apart_with_5pct_noise_tie_and_the_cheaper_is_recommended():
    rs = runs("w2", 102.0, workers=2) + runs("w0", 100.0, workers=0)
    rtr = noise.run_to_run(rs)
    assert rtr.s_rel == pytest.approx(0.05) and rtr.df == 4
    d = noise.difference(rs, "w2a", "w0a")
    assert d.ratio == pytest.approx(100 / 102) and not d.beyond_noise
    h = math.sqrt(2) * math.log1p(2.776 * 0.05 / math.sqrt(3))  # both means +-8.0%, in quadrature on log scale
    assert (d.low, d.high) == (pytest.approx(100 / 102 * math.exp(-h)), pytest.approx(100 / 102 * math.exp(h)))
    assert noise.contenders(rs) == ["w2a", "w0a"] and noise.contenders(rs, limit=1) == ["w2a"]
    rk = ranking.rank_trials(rs)
    assert rk.fastest_trial_id == "w2a" and rk.best_trial_id == rk.recommended_trial_id == "w0a"
    assert rk.tied == ["w2a", "w0a"]
    assert rk.recommendation_reason.startswith("w2a and w0a are tied within ±11% (w0a/w2a = 0.98, 95% 0.88-1.09)")
    assert rk.recommendation_reason.endswith(
        "recommending w0a because it uses 0 DataLoader workers per rank instead of 2"
    )
    v = {x.trial_id: x for x in rk.verdicts}
    assert [x.trial_id for x in rk.verdicts] == ["w2a", "w2b", "w2c", "w0a", "w0b", "w0c"]
    assert v["w2a"].position == v["w2c"].position == 1 and v["w0b"].position == 2  # positions per configuration
    assert v["w0b"].repeat_of == "w0a" and v["w0b"].evidence.startswith("repeat of w0a; ")
    assert all(x.tied_with_best for x in rk.verdicts) and v["w0a"].runs == ["w0a", "w0b", "w0c"]
    assert v["w0a"].img_per_s == pytest.approx(100.0) and v["w0a"].img_per_s_ci_low == pytest.approx(
        100 * (1 - 2.776 * 0.05 / math.sqrt(3))
    )
    assert rk.run_to_run_rel == pytest.approx(0.05) and rk.run_to_run_df == 4 and rk.run_to_run_configs == 2
    text = ranking.headline(rs, rk)
    assert (
        text.startswith("Best: w0a (") and "mean of 3 runs" in text and "Within the noise: w2a and w0a are tied" in text
    )


def test_30pct_apart_the_winner_is_declared():
    rs = runs("w2", 130.0, workers=2) + runs("w0", 100.0, workers=0)
    d = noise.difference(rs, "w0a", "w2c")
    assert d.ratio == pytest.approx(1.3) and d.beyond_noise and d.low > 1.1
    assert noise.contenders(rs) == ["w2a"]
    rk = ranking.rank_trials(rs)
    assert rk.best_trial_id == rk.fastest_trial_id == "w2a" and rk.tied == []
    assert not any(v.tied_with_best for v in rk.verdicts)
    assert rk.recommendation_reason.startswith("w2a leads the next configuration beyond the noise: w0a runs at 0.77x")


def test_among_the_tied_less_memory_then_no_nccl_variable_then_no_cache():
    rs = [trial("big", 101.0, mem=1200.0), trial("small", 100.0, mem=800.0, batch=8)]
    rk = ranking.rank_trials(rs)
    assert (
        rk.best_trial_id == "small" and "it peaks at 800 MiB of memory instead of 1200 MiB" in rk.recommendation_reason
    )
    rs = [trial("ring", 101.0, nccl="ring"), trial("def", 100.0, mem=920.0)]  # 2% more memory counts as the same
    assert ranking.rank_trials(rs).best_trial_id == "def"
    rs = [trial("ram", 101.0, cache="ram"), trial("off", 100.0)]
    rk = ranking.rank_trials(rs)
    assert rk.best_trial_id == "off" and rk.recommendation_reason.endswith("it caches no images (cache ram)")
    rs = [trial("fast", 101.0), trial("slow", 100.0, pin_memory=True)]  # nothing cheaper: the fastest
    rk = ranking.rank_trials(rs)
    assert rk.best_trial_id == "fast" and "recommending fast, the fastest" in rk.recommendation_reason


def test_unknown_uncertainty_is_never_beyond_noise():
    a, b = trial("a", 100.0), trial("b", 150.0, workers=0)
    b.img_per_s_ci_low = b.img_per_s_ci_high = None  # too few steps: method says so, no bounds
    d = noise.difference([a, b], "a", "b")
    assert not d.beyond_noise and d.high == math.inf and "too few steps" in d.interval_text()
    assert noise.difference([a, a], "a", "a").ratio == 1.0
    gone = noise.difference([a, replace(b, status="error")], "a", "b")
    assert math.isnan(gone.ratio) and not gone.beyond_noise and gone.method.startswith("b did not finish")


def test_records_without_intervals_compare_as_exact_points():
    rs = [
        TrialResult("a", "ok", K, 2, "cpu", img_per_s=100.0),
        TrialResult("b", "ok", replace(K, workers=0), 2, "cpu", img_per_s=101.0),
    ]
    d = noise.difference(rs, "a", "b")
    assert not d.known and d.beyond_noise and d.gain_text() == "+1% images/s"
    assert noise.config_of(rs, "a").method.startswith("uncertainty not recorded")


def test_advice_says_no_measurable_effect_inside_the_noise_and_a_gain_beyond_it():
    rs = runs("w2", 102.0, workers=2) + runs("w4", 130.0, workers=4)
    rs += runs("b32", 100.0, workers=2, batch=32)
    eff = {(e.knob, e.after): e for e in advice.effects(rs)}
    assert len(advice.effects(rs)) == 2  # one per pair of configurations, not per pair of runs
    w = eff[("workers", "4")]
    assert w.beyond_noise and w.gain == pytest.approx(130 / 102 - 1) and w.low > 1.0
    assert w.text.startswith("workers 2 -> 4: +27% images/s (95% +") and w.text.endswith("(w2a -> w4a)")
    b = eff[("batch", "32")]
    assert not b.beyond_noise and b.low < 1.0 < b.high
    assert b.text.startswith("batch 16 -> 32: no measurable effect on images/s (95% -") and "+6%" not in b.text
    assert "-2% images/s" not in b.text
    path = advice.path_to_best(rs[-3], rs[0], rs)  # from w2 at batch 16 to batch 32
    assert path == [
        b.text.replace(": no measurable", ": no measurable", 1).split(", step")[0]
        + " with everything else as in the best trial, step n/a -> n/a, peak memory 900 MiB -> 900 MiB (w2a -> b32a)"
    ]


def test_headline_claims_no_gain_inside_the_noise():
    rs = runs("d", 100.0, workers=2) + runs("b", 103.0, workers=0)
    rk = ranking.rank_trials(rs)
    text = ranking.headline(rs, rk, {"Ultralytics defaults": "da"})
    assert "+3% over" not in text
    assert "no measurable gain over Ultralytics defaults (da: ratio 1.03, 95% 0.92-1.15)" in text
    rs = runs("d", 100.0, workers=2) + runs("b", 150.0, workers=0)
    rk = ranking.rank_trials(rs)
    assert "+50% over Ultralytics defaults (da, 95% +" in ranking.headline(rs, rk, {"Ultralytics defaults": "da"})


def test_dual_bottleneck_when_both_share_intervals_reach_their_limits():
    r = trial("a", 100.0)
    r.data_wait_frac, r.data_wait_frac_ci = 0.14, [0.11, 0.17]
    r.comm_frac, r.comm_frac_ci = 0.08, [0.05, 0.12]
    assert ranking.bounds(r)[0] == ["input", "communication"] and ranking.classify(r)[0] == "input"
    v = ranking.rank_trials([r]).verdicts[0]
    assert (
        v.bottleneck == "input" and v.label == "input + communication" and v.bottlenecks == ["input", "communication"]
    )
    assert v.evidence.startswith(
        "data wait 14% (95% 11-17%) and exposed AllReduce 8% (95% 5-12%) of the step: both intervals"
    )
    r.data_wait_frac, r.data_wait_frac_ci, r.comm_frac, r.comm_frac_ci = 0.08, [0.06, 0.11], 0.12, [0.10, 0.14]
    v = ranking.rank_trials([r]).verdicts[0]
    assert v.bottleneck == "communication" and v.label == "communication + input"
    r.data_wait_frac, r.data_wait_frac_ci, r.comm_frac, r.comm_frac_ci = 0.14, [0.11, 0.17], 0.05, [0.03, 0.09]
    v = ranking.rank_trials([r]).verdicts[0]
    assert v.bottleneck == "input" and v.label is None and v.bottlenecks == ["input"]
    assert v.evidence == "data wait is 14% (95% 11-17%) of the step (limit 10%)"
    r.data_wait_frac, r.data_wait_frac_ci, r.comm_frac, r.comm_frac_ci = 0.08, [0.06, 0.11], 0.05, [0.03, 0.12]
    assert ranking.rank_trials([r]).verdicts[0].bottlenecks == ["compute"]  # no estimate reaches a limit


def test_old_records_without_the_new_fields_still_load():
    d = to_dict(trial("a", 100.0))
    for k in (
        "img_per_s_ci_low",
        "img_per_s_ci_high",
        "img_per_s_ci_method",
        "repeat_of",
        "data_wait_frac_ci",
        "comm_frac_ci",
    ):
        d.pop(k)
    r = from_dict(TrialResult, d)
    assert r.img_per_s_ci_low is None and r.repeat_of is None and r.data_wait_frac_ci is None
    rk = from_dict(
        Ranking,
        {"verdicts": [{"trial_id": "a", "position": 1, "bottleneck": "input", "evidence": "x"}], "best_trial_id": "a"},
    )
    assert rk.recommended_trial_id is None and rk.tied == [] and rk.run_to_run_df == 0
    assert rk.verdicts[0].tied_with_best is False and rk.verdicts[0].runs == [] and rk.verdicts[0].bottlenecks == []
