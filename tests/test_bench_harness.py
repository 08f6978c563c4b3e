"""bench/harness.py: the one timing loop, device naming, report writer and table of every benchmark."""

from __future__ import annotations

import json
import time

import pytest

from bench import harness


@pytest.mark.parametrize(("renderer", "slug"), [
    ("llvmpipe (LLVM 15.0.6, 256 bits)", "llvmpipe"),
    ("NVIDIA H100 80GB HBM3/PCIe/SSE2", "h100"),
    ("NVIDIA H200/PCIe/SSE2", "h200"),
    ("NVIDIA A100-SXM4-80GB/PCIe/SSE2", "a100"),
    ("NVIDIA GeForce RTX 4090/PCIe/SSE2", "nvidia-geforce-rtx-4090"),
    ("Mesa Intel(R) UHD Graphics 630 (CFL GT2)", "mesa-intel-uhd-graphics-630"),
])
def test_device_slug_names_the_gpu_model_else_the_words(renderer, slug):
    assert harness.device_slug(renderer) == slug


def test_measure_warms_up_once_then_times_every_repeat():
    calls = []
    timing = harness.measure(lambda: calls.append(1) or len(calls), repeats=4)
    assert len(calls) == 5 and len(timing.times) == 4
    assert timing.result == 5, "the last run's result"
    assert timing.min <= timing.median <= timing.max


def test_measure_takes_a_case_s_own_seconds_and_cuts_repeats_to_the_budget():
    def case() -> harness.Seconds:
        time.sleep(0.002)  # wall time the case leaves out of its own figure
        return harness.Seconds(0.5)

    timing = harness.measure(case, repeats=10, budget_s=1.6)
    assert timing.warmup == 0.5 and timing.times == [0.5, 0.5, 0.5], "1.6 s budget / 0.5 s warm-up = 3 runs"
    assert len(harness.measure(case, repeats=10, budget_s=0.1).times) == 1, "at least one run"
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        harness.measure(case, repeats=0)


def test_write_report_adds_machine_info_and_names_the_file_after_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    path = harness.write_report({"device": "NVIDIA H100 80GB HBM3/PCIe/SSE2", "results": [1]}, "demo")
    assert path == tmp_path / "demo-h100.json"
    report = json.loads(path.read_text())
    assert report["results"] == [1]
    assert report["machine"]["gl_renderer"] == "NVIDIA H100 80GB HBM3/PCIe/SSE2"
    assert {"torch", "cpu_count", "date", "device_slug"} <= set(report["machine"])
    explicit = harness.write_report({"device": "llvmpipe"}, "demo", tmp_path / "sub" / "x.json")
    assert explicit.exists()


def test_markdown_table_aligns_label_columns_left_and_numbers_right():
    assert harness.markdown_table(["method", "ms"], [["a", "1.0"]]) == "| method | ms |\n|---|---:|\n| a | 1.0 |"
    assert harness.markdown_table(["MiB", "GiB/s"], [["4", "2.00"]], left=0).splitlines()[1] == "|---:|---:|"


def test_with_ratio_appends_the_ratio_only_where_there_is_one():
    assert harness.with_ratio("12.0", 1.234) == "12.0 (1.23×)"
    assert harness.with_ratio("12.0", None) == "12.0"


def test_measure_peer_keeps_the_fastest_thread_count_and_restores_torch(monkeypatch):
    """The case runs once per setting; the setting with the lowest median wins and torch's count is restored."""
    import torch

    from bench import harness

    previous = torch.get_num_threads()
    seen = []

    def case():
        seen.append(torch.get_num_threads())
        return harness.Seconds(0.5 if torch.get_num_threads() == 1 else 0.25)

    best = harness.measure_peer(case, repeats=2, settings=[1, 2])
    assert best.threads == 2 and best.timing.median == 0.25
    assert best.fields() == {"torch_threads": 2, "median_s_by_threads": {"1": 0.5, "2": 0.25}}
    assert seen == [1, 1, 1, 2, 2, 2] and torch.get_num_threads() == previous
    assert set(harness.peer_thread_settings()) >= {1, 2}
