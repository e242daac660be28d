"""The knob table (yoloprof/search/knob_table.py) is the one place a knob is described: the records, the plan's
axes, the request, the parser, the search space, results.csv and best.yaml all agree with it."""

from __future__ import annotations

import dataclasses

import pytest

from yoloprof.errors import UsageError
from yoloprof.flags import parser
from yoloprof.records import Knobs
from yoloprof.reports.csv_table import COLUMNS
from yoloprof.scan.request import ScanRequest, parse_axes
from yoloprof.search import baselines, knob_table, plan, strategy
from yoloprof.search.knob_table import KNOBS, NAMES
from yoloprof.search.space import auto_space

CPU2 = plan.Hardware("cpu", 2, [], cpu_count=2, gpus_on_machine=0)
GPU2 = plan.Hardware("cuda", 2, [0, 1], cpu_count=32, gpus_on_machine=2, bf16=True)


def test_the_records_the_axes_and_the_request_name_the_tables_knobs_in_its_order():
    assert NAMES == tuple(f.name for f in dataclasses.fields(Knobs))
    assert NAMES == tuple(f.name for f in dataclasses.fields(plan.Axes))
    request = [f.name for f in dataclasses.fields(ScanRequest)]
    assert [n for n in request if n in NAMES] == list(NAMES)
    assert set(NAMES) <= set(COLUMNS)  # results.csv has a column for each
    for order in strategy.ORDER.values():  # the descent walks every knob, whatever binds
        assert sorted(order) == sorted(NAMES)


def test_the_parser_takes_each_knob_from_the_table_with_its_help():
    scan = parser()._subparsers._group_actions[0].choices["scan"]
    by_flag = {a.option_strings[0]: a for a in scan._actions if a.option_strings}
    for k in KNOBS:
        assert by_flag[k.flag].help == f"comma list, e.g. {k.example}"
    assert "--channels-last" in by_flag and "--pin-memory" in by_flag


def test_the_request_is_built_from_the_parsed_flags_with_its_defaults_in_one_place():
    args = parser().parse_args(["scan"])
    assert set(vars(args)) - {"cmd", "resume"} == set(ScanRequest.flag_names())
    assert ScanRequest.from_flags(args, ["yoloprof", "scan"]) == ScanRequest(command=["yoloprof", "scan"])
    flags = "scan --steps 7 --batch 8,16 --channels-last off --pin-memory on,off --optimizer SGD".split()
    req = ScanRequest.from_flags(parser().parse_args(flags), ["yoloprof", *flags])
    assert (req.steps, req.warmup, req.optimizer) == (7, ScanRequest.warmup, "SGD")
    given = parse_axes(req)
    assert given == {**dict.fromkeys(NAMES), "batch": [8, 16], "channels_last": [False], "pin_memory": [True, False]}
    scan_help = parser()._subparsers._group_actions[0].choices["scan"].format_help()
    assert f"(default {ScanRequest.steps})" in scan_help and f"(default {ScanRequest.warmup})" in scan_help


@pytest.mark.parametrize("k", KNOBS, ids=NAMES)
def test_each_knob_parses_its_example_and_auto_tries_its_values(k):
    example = k.example.split()[0]
    values = k.parse(k.flag, example)
    assert len(values) == len(example.split(","))
    if k.auto is not None:
        assert set(values) <= set(k.auto) | (
            {"reduce-overhead", "max-autotune-no-cudagraphs"} if k.name == "compile" else set()
        )
    if k.fallback is not None:  # a value the search tries anyway
        assert k.fallback in k.auto
    with pytest.raises(UsageError, match=k.flag):
        k.parse(k.flag, "bogus-value")


def test_the_auto_space_tries_the_tables_values_and_keeps_a_fallback():
    gpu = auto_space(GPU2, dataset_fits_ram=True)
    for k in KNOBS:
        if k.auto is not None and k.name not in ("compile", "nccl"):
            assert gpu.values[k.name] == list(k.auto), k.name
    cpu = auto_space(CPU2)  # AMP, pinned memory, NCCL and NHWC cannot matter on CPU ranks: their fallback runs
    for name in ("amp", "pin_memory", "nccl", "channels_last"):
        assert cpu.values[name] == [knob_table.BY_NAME[name].fallback]


def test_your_settings_parse_through_the_table_and_a_wrong_one_names_every_knob():
    mine = baselines.parse_baseline("batch=8,workers=2,amp=off,channels-last=off,deterministic=off", GPU2)
    assert (mine.batch, mine.workers, mine.amp, mine.channels_last, mine.deterministic) == (8, 2, False, False, False)
    for bad in ("bogus=1", "batch=0", "amp=maybe"):
        with pytest.raises(UsageError) as e:
            baselines.parse_baseline(bad, GPU2)
        assert str(e.value) == (
            f"--baseline '{bad}': not a setting yoloprof varies ({', '.join(NAMES)}) with a valid value"
        )


def test_best_yaml_carries_the_tables_config_knobs_as_ultralytics_takes_them():
    from ultralytics.cfg import DEFAULT_CFG_DICT

    assert set(knob_table.IN_CONFIG) <= set(DEFAULT_CFG_DICT)  # each is an argument of Ultralytics
    assert {k.name for k in KNOBS if k.carrier == "env"} == {"pin_memory", "nccl"}
    k = Knobs(32, 4, "bf16", True, "off", "ring", deterministic=False, compile="default", channels_last=True)
    assert knob_table.in_config(k) == {
        "batch": 32,
        "workers": 4,
        "amp": "bf16",
        "cache": False,
        "deterministic": False,
        "compile": "default",
    }  # channels_last on: left out, Ultralytics' auto
    off = dataclasses.replace(k, cache="ram", compile="off", channels_last=False)
    assert knob_table.in_config(off) == {
        **knob_table.in_config(k),
        "cache": "ram",
        "compile": False,
        "channels_last": False,
    }
