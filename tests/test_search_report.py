"""The auto search's decisions in report.html ("How the scan searched") and in the terminal summary."""

from __future__ import annotations

import dataclasses
import html as html_lib
import re

from yoloprof import pipeline
from yoloprof.records import Decision, write_json
from yoloprof.reports import config_files, html, terminal

T = ["t01-b8-w0-fp32", "t02-b8-w2-fp32", "t03-b16-w0-fp32", "t04-b16-w2-fp32"]  # the recorded fixture's trials

DECISIONS = [
    Decision("space", "pruned", "amp on: AMP needs a GPU; CPU trials train in FP32", "amp", "on"),
    Decision("space", "pruned", "pin_memory on: pinned memory only speeds copies to a GPU", "pin_memory", "on"),
    Decision("ceilings", "pruned", "workers 8: the loaders deliver 3.1x the fastest step at workers 2", "workers", "8"),
    Decision("ceilings", "kept", "the compute ceiling shows no OOM and no memory limit: no batch is pruned", "batch"),
    Decision(
        "start",
        "tried",
        "start: the reference every gain is measured against: t03-b16-w0-fp32 41.9 img/s",
        trial_id=T[2],
        budget_used_s=45.0,
    ),
    Decision(
        "descent",
        "tried",
        "workers 0 -> 2 from t03-b16-w0-fp32 (input-bound): t04-b16-w2-fp32 39.9 img/s",
        "workers",
        "2",
        T[3],
        110.0,
    ),
    Decision(
        "descent",
        "pruned",
        "the compute ceiling fits at most batch 32 with amp off; batch 64 would run out of memory",
        "batch",
        "64",
        budget_used_s=110.0,
    ),
    Decision("descent", "kept", "workers 0: nothing beat t03-b16-w0-fp32 beyond noise", "workers", "0", T[2], 110.0),
    Decision(
        "budget",
        "skipped-budget",
        "batch 32 not tried: the next trial (~60 s) would pass the budget",
        "batch",
        "32",
        budget_used_s=200.0,
    ),
    Decision(
        "confirm", "repeat", "run 2 of t03-b16-w0-fp32: t01-b8-w0-fp32 41.0 img/s", trial_id=T[0], budget_used_s=260.0
    ),
    Decision(
        "confirm", "done", "4 configurations in 4 trials, 276 s of the 300 s budget", trial_id=T[2], budget_used_s=276.0
    ),
]


def _auto(out, **kw):
    specs = [dataclasses.replace(s, repeat_of=T[2]) if s.trial_id == T[0] else s for s in out.meta.specs]
    meta = dataclasses.replace(
        out.meta,
        strategy="auto",
        budget_s=300.0,
        precision=0.03,
        max_steps=60,
        decisions=list(DECISIONS),
        specs=specs,
        **kw,
    )
    return dataclasses.replace(out, meta=meta)


def _page(out) -> str:
    return html.render(out, config_files.best_config(out.meta, out.best), title="scan")


def _section(page: str) -> str:
    m = re.search(r'<section id="search">(.*?)</section>', page, re.S)
    assert m, "no 'How the scan searched' section"
    return m.group(1)


def test_auto_report_shows_every_decision_by_stage(cpu_scan_copy):
    page = _page(_auto(pipeline.collect(cpu_scan_copy)))
    sec = _section(page)
    assert "<h2>How the scan searched</h2>" in sec and "auto: ceilings first" in sec and "(4 trials)" in sec
    assert "4.6 of 5.0 min used" in sec  # the last decision's 276 s of the 300 s budget
    assert "each trial measured 20 to 60 steps, until its images/s was within ±3% (95% interval)" in sec
    # the stages in the order the search takes them, each with its own table
    heads = re.findall(r"<h3>(\w+):", sec)
    assert heads == ["Space", "Ceilings", "Start", "Descent", "Confirm", "Budget"]
    rows = re.findall(
        r'<tr class="([\w-]+)"><td class="l">([\w-]+)</td><td class="l">([^<]*)</td>'
        r'<td class="l">(?:<a href="#trial-[\w-]+">)?([^<]*)(?:</a>)?</td><td class="l reason">([^<]*)</td>'
        r"<td>([^<]*)</td></tr>",
        sec,
    )
    assert len(rows) == len(DECISIONS)
    for target in re.findall(r'<a href="#(trial-[\w-]+)">', sec):  # a trial's decisions link to its row
        assert f'<tr id="{target}"' in page
    for d in DECISIONS:  # every reason, escaped, in a row of its kind
        assert html_lib.escape(d.reason) in sec
    by_reason = {html_lib.unescape(r[4]): r for r in rows}
    css, kind, setting, trial, _, minutes = by_reason[DECISIONS[0].reason]
    assert (css, kind, setting, trial, minutes) == ("struck", "pruned", "amp=on", "", "")
    assert by_reason[DECISIONS[2].reason][:3] == ("struck", "pruned", "workers=8")
    assert by_reason[DECISIONS[3].reason][:3] == ("kind-kept", "kept", "batch")  # a knob without a value
    assert by_reason[DECISIONS[5].reason] == (
        "kind-tried",
        "tried",
        "workers=2",
        T[3],
        html_lib.escape(DECISIONS[5].reason),
        "1.8",
    )
    assert by_reason[DECISIONS[8].reason][:3] == ("struck", "skipped-budget", "batch=32")
    assert by_reason[DECISIONS[10].reason][3:] == (T[2], DECISIONS[10].reason, "4.6")
    assert sum(r[0] == "struck" for r in rows) == 5  # 4 pruned + 1 skipped for the budget
    assert not any(r[0] == "struck" for r in rows if r[1] in ("tried", "adopted", "repeat", "kept", "done"))
    assert f'<a href="#trial-{T[3]}">{T[3]}</a>' in sec  # a decision's trial links to its row
    assert "tr.struck" in page  # its style is in the page
    assert 'id="steps-note"' not in page  # the auto section says it


def test_decisions_in_scan_json_reach_the_written_report(cpu_scan_copy):
    out = _auto(pipeline.collect(cpu_scan_copy))
    write_json(cpu_scan_copy / "scan.json", out.meta)
    again = pipeline.write_all(cpu_scan_copy)
    assert again.meta.decisions == DECISIONS and again.meta.strategy == "auto"
    sec = _section((cpu_scan_copy / "report.html").read_text())
    assert "4.6 of 5.0 min used" in sec and html_lib.escape(DECISIONS[8].reason) in sec


def test_grid_and_old_records_have_no_search_section(cpu_scan_copy):
    out = pipeline.collect(cpu_scan_copy)
    assert out.meta.strategy == "grid" and out.meta.decisions == []
    page = _page(out)
    assert "How the scan searched" not in page and 'id="steps-note"' not in page  # fixed steps: nothing to say
    pipeline.write_all(cpu_scan_copy)
    assert "How the scan searched" not in (cpu_scan_copy / "report.html").read_text()
    # an auto record with no decisions (written before they were recorded): no section either
    old = dataclasses.replace(out, meta=dataclasses.replace(out.meta, strategy="auto", budget_s=300.0))
    assert "How the scan searched" not in _page(old)
    # a grid scan measured until precise: one line on the step range
    precise = dataclasses.replace(out, meta=dataclasses.replace(out.meta, precision=0.03, max_steps=60))
    page = _page(precise)
    assert "How the scan searched" not in page
    assert re.search(
        r'id="steps-note">Steps: each trial measured 20 to 60 steps, until its images/s was within '
        r"±3% \(95% interval\)\.</p>",
        page,
    )


def test_search_summary_counts(cpu_scan_copy):
    out = pipeline.collect(cpu_scan_copy)
    assert terminal.search_summary(out.meta) is None  # grid
    meta = _auto(out).meta
    text = terminal.search_summary(meta)
    assert text == (
        "auto search: 4 trials in 4.6 of 5.0 min; 4 values pruned (2 by the hardware, 1 by the "
        "ceilings, 1 as too large for memory), 1 skipped for the budget; 1 contender repeated (1 run)."
    )
    # no repeat in the plan, no budget recorded: the runs alone, the minutes alone
    bare = dataclasses.replace(meta, specs=[], budget_s=None, decisions=DECISIONS[:2] + DECISIONS[4:6])
    assert terminal.search_summary(bare) == (
        "auto search: 4 trials in 1.8 min; 2 values pruned (2 by the "
        "hardware), 0 skipped for the budget; no contender repeated."
    )
    assert terminal.search_summary(dataclasses.replace(meta, decisions=[])) is None
