"""benchmarks/cuda_coverage.py: which lines the finder calls CUDA-only, rule by rule, on small sources,
and the executed / all arithmetic on a made-up set of covered lines. Pure: no coverage run."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("coverage")  # the finder numbers lines as coverage does

from conftest import load_benchmark as _load


cc = _load("cuda_coverage")


def found(src: str) -> dict[int, str]:
    return cc.find_cuda_lines(textwrap.dedent(src).lstrip("\n"))


def lines(src: str) -> set[int]:
    return set(found(src))


# -- (a) if / elif / else ------------------------------------------------------------------------
def test_the_body_of_an_equals_cuda_test_and_not_its_else():
    src = """
    def f(spec, device):
        x = 1
        if spec.device == "cuda":
            a = 2
            b = 3
        else:
            c = 4
        if "cuda" == device.type:
            d = 5
        return x
    """
    assert found(src) == {4: "if", 5: "if", 9: "if"}


def test_an_elif_on_cuda_marks_its_own_branch_only():
    src = """
    def f(kind):
        if kind == "cpu":
            a = 1
        elif kind == "cuda":
            b = 2
        else:
            c = 3
    """
    assert lines(src) == {5}


def test_not_equal_cuda_marks_the_else_branch_with_its_elif_chain():
    src = """
    def f(hw):
        if hw.device != "cuda":
            a = 1
        elif hw.world_size > 1:
            b = 2
        else:
            c = 3
        d = 4
    """
    assert found(src) == {4: "else", 5: "else", 7: "else"}


def test_a_negated_test_whose_body_returns_makes_the_rest_of_the_block_cuda_only():
    src = """
    class Clock:
        def mark(self):
            if not self.cuda:
                return 0
            if self.sync:
                self.synchronize()
            return 1

        def other(self):
            return 2
    """
    assert found(src) == {5: "rest", 6: "rest", 7: "rest"}


def test_rest_of_block_stops_at_the_enclosing_block_and_follows_raise_and_continue():
    src = """
    def f(items, device):
        for it in items:
            if it.device != "cuda":
                continue
            use(it)
        if not torch.cuda.is_available():
            raise RuntimeError("no GPU")
        return gpus()
    """
    assert found(src) == {5: "rest", 8: "rest"}


def test_a_negated_test_whose_body_may_fall_through_marks_no_rest():
    src = """
    def f(cuda, x):
        if not cuda:
            if x:
                return 0
        y = 1
        if not cuda:
            if x:
                return 0
            else:
                raise ValueError
        z = 2
    """
    assert lines(src) == {11}


def test_and_with_a_cuda_test_is_cuda_only_or_is_not():
    src = """
    def f(self, x):
        if self.cuda and not self.sync:
            a = 1
        if x and use_cuda:
            b = 2
        if self.cuda or x:
            c = 3
        if x or spec.device == "cuda":
            d = 4
        if not (self.cuda and x):
            e = 5
    """
    assert lines(src) == {3, 5}


def test_or_of_negated_tests_leaves_a_cuda_only_rest_and_and_of_them_does_not():
    src = """
    def synchronize(self):
        if not self.cuda or self.device_error is not None:
            return False
        wait()
        if device == "" and not torch.cuda.is_available():
            return 0
        go()
    """
    assert lines(src) == {4, 5, 6, 7}


def test_cuda_flags_and_calls():
    src = """
    def f(r, backend):
        if cuda:
            a = 1
        if _use_cuda(backend):
            b = 2
        if torch.cuda.is_available():
            c = 3
        if r.driver_cuda:
            d = 4
        if r.cuda_visible_devices is not None:
            e = 5
        if device in ("cuda", "gpu"):
            f = 6
        if args.backend == "nccl":
            g = 7
        if knob == "nccl":
            h = 8
    """
    assert lines(src) == {3, 5, 7, 15}


def test_a_local_name_assigned_a_cuda_test_is_a_flag_in_its_scope():
    src = """
    def f(hw):
        n, gpu = 2, hw.device == "cuda"
        if gpu:
            a = 1

    def g(gpu):
        if gpu:
            b = 2

    def h(hw):
        gpu = hw.device == "cuda"
        gpu = gpu or hw.other
        if gpu:
            c = 3
    """
    assert lines(src) == {4}


# -- (b) functions named *cuda* -----------------------------------------------------------------
def test_the_body_of_a_function_named_cuda_and_not_its_def_line():
    src = """
    def _cuda_event():
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        return ev


    def _use_cuda(backend):
        return backend == "nccl"


    def torch_cuda_error():
        return None


    def cuda_version(v):
        return str(v)


    def plain():
        def sync_cuda():
            x = 1
        return sync_cuda
    """
    assert found(src) == {2: "def", 4: "def", 5: "def", 22: "def"}


# -- (c) the marker comment ----------------------------------------------------------------------
def test_the_marker_comment_on_a_def_an_if_an_else_and_a_statement():
    src = """
    def ready(mark):  # cuda-only
        return mark.event.query()


    def f(mark, x):
        if mark.event is not None:  # cuda-only: only events on a GPU
            a = 1
        if x:
            b = 2
        else:  # cuda-only
            c = 3
        d = mark.event.query()  # fmt: skip  # cuda-only
        with lock:  # cuda-only
            e = 4
        f = (1,
             2)  # cuda-only
        return a
    """
    assert found(src) == {
        2: "marker",
        7: "marker",
        11: "marker",
        12: "marker",
        13: "marker",
        14: "marker",
        15: "marker",
    }


def test_a_comment_that_only_mentions_cuda_is_no_marker():
    src = """
    def f(x):
        y = x  # cuda work below
        return y  # not-cuda-only-at-all
    """
    assert lines(src) == set()


# -- (d) conditional expressions -----------------------------------------------------------------
def test_a_conditional_expression_on_cuda_counts_its_statements_line():
    src = """
    def f(spec, cuda, x):
        backend = "nccl" if cuda else "gloo"
        device = "cpu" if spec.device != "cuda" else "gpu"
        out = make(a=1,
                   b=2 if spec.device == "cuda" else 3)
        other = 1 if x else 2
        return out
    """
    assert found(src) == {2: "ifexp", 3: "ifexp", 4: "ifexp"}


def test_inside_a_cuda_branch_the_branch_rule_wins_and_nesting_is_whole():
    src = '''
    def f(cuda):
        """A docstring is not a statement."""
        if cuda:
            x = "a" if cuda else "b"
            for i in range(3):
                y = i
    '''
    assert found(src) == {4: "if", 5: "if", 6: "if"}


def test_multi_line_statements_count_once_at_their_first_line_and_empty_files_have_none():
    src = """
    def f(dev):
        if dev.type == "cuda":
            total = get(
                dev,
            )
    """
    assert found(src) == {3: "if"}
    assert cc.find_cuda_lines("") == {}


# -- ranges and the intersection arithmetic ------------------------------------------------------
def test_ranges_join_runs_of_consecutive_statements():
    assert cc.ranges([3, 4, 5, 9]) == "3-5, 9"
    assert cc.ranges([3, 7], statements=[1, 3, 7, 9]) == "3-7"  # 4-6: no statements in between
    assert cc.ranges([3, 9], statements=[3, 7, 9]) == "3, 9"
    assert cc.ranges([]) == ""


def test_intersect_counts_executed_cuda_lines_per_file_and_in_total():
    cuda = {
        "probes/clock.py": {31: "def", 33: "def", 63: "rest", 72: "rest"},
        "yoloprof/worker/ddp.py": {129: "if"},
        "probes/memory.py": {44: "if", 45: "ifexp"},
    }
    executed = {
        "probes/clock.py": {1, 2, 31, 33, 72, 200},  # lines that are not CUDA-only do not count
        "probes/memory.py": {45},
        "reports/html.py": {10, 11},
    }
    main = {"probes/clock.py": {1, 31, 33}, "probes/memory.py": {45}}
    figures = cc.intersect(cuda, executed, main)
    by_path = {f.path: f for f in figures}
    assert [f.path for f in figures] == sorted(cuda)
    assert (len(by_path["probes/clock.py"].executed), by_path["probes/clock.py"].total) == (3, 4)
    assert by_path["probes/clock.py"].missing == [63]
    assert by_path["probes/clock.py"].only_in_subprocesses == {72}
    assert by_path["yoloprof/worker/ddp.py"].executed == set()  # a file no process imported
    assert by_path["yoloprof/worker/ddp.py"].missing == [129]
    assert cc.totals(figures) == (4, 7)
    assert cc.by_rule(figures) == {"if": (0, 2), "rest": (1, 2), "def": (2, 2), "ifexp": (1, 1)}
    assert cc.summary_line(figures) == "CUDA-only lines executed by the suite: 4 of 7 (57%)"
    assert cc.summary_line([]) == "CUDA-only lines executed by the suite: 0 of 0 (n/a)"


def test_measured_paths_from_another_checkout_match_by_their_tail(tmp_path):
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "clock.py").write_text("x = 1\n")
    assert cc.relative(str(tmp_path / "probes" / "clock.py"), tmp_path) == "probes/clock.py"
    assert cc.relative("/elsewhere/checkout/probes/clock.py", tmp_path) == "probes/clock.py"
    assert cc.relative("/elsewhere/site-packages/torch/cuda/__init__.py", tmp_path) is None


def test_the_coverage_settings_measure_subprocesses_into_one_folder(tmp_path):
    import coverage

    rc = tmp_path / "coveragerc"
    rc.write_text(cc.rcfile_text(tmp_path / ".coverage", tmp_path))
    config = coverage.Coverage(config_file=str(rc)).config
    assert config.parallel and config.sigterm
    assert set(config.patch) == {"subprocess", "_exit"}
    assert set(config.concurrency) == {"thread", "multiprocessing"}
    assert config.data_file == str(tmp_path / ".coverage")
    assert config.source == [str(tmp_path / d) for d in cc.PRODUCT_DIRS]
    assert "no-data-collected" in config.disable_warnings
