"""What every benchmark shares: the timing loop, device naming, the JSON report, the figure and the table.

Run a benchmark from the repository root as a module, e.g. ``python -m bench.pyramid``; reports land in
``bench/results/<name>-<device slug>.json`` unless ``--out`` says otherwise.

Convention:
    A *case* is a zero-argument callable. Its wall time, ``time.perf_counter`` around the call, is one
    sample, unless it returns `Seconds`: then that is the sample (a case that times only part of itself,
    e.g. to leave its cleanup out). With a CUDA ``device`` the sample includes ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "lavapipe")


# -- timing -------------------------------------------------------------------------------
class Seconds(float):
    """A case's own measurement of itself, in seconds; `measure` takes it instead of the call's wall time."""


Case = Callable[[], Any]


@dataclass(frozen=True)
class Timing:
    """The timed runs of one case: `times` (seconds each, warm-up excluded), the warm-up's seconds and the
    last run's result."""

    times: list[float]
    warmup: float
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


def sync(device: torch.device | str | None) -> None:
    """Wait for CUDA work on `device`; nothing for the CPU or None."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(case: Case, device: torch.device | str | None = None) -> tuple[float, Any]:
    """(seconds, result) of one run of `case`: its `Seconds` if it returns one, else wall time up to a device sync."""
    start = time.perf_counter()
    result = case()
    sync(device)
    elapsed = time.perf_counter() - start
    return (float(result), result) if isinstance(result, Seconds) else (elapsed, result)


def measure(case: Case, repeats: int, budget_s: float | None = None,
            device: torch.device | str | None = None) -> Timing:
    """One untimed warm-up (shader compilation, allocator, first-touch page faults), then `repeats` timed runs,
    fewer (at least one) where the warm-up's time says they would take more than `budget_s` seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    warmup, result = time_once(case, device)
    n = repeats if budget_s is None else max(1, min(repeats, int(budget_s // max(warmup, 1e-9))))
    times = []
    for _ in range(n):
        seconds, result = time_once(case, device)
        times.append(seconds)
    return Timing(times, warmup, result)


def peer_thread_settings() -> list[int]:
    """The intra-op thread counts a user would try for a CPU torch peer: 1, 2, torch's default and every core."""
    return sorted({1, 2, torch.get_num_threads(), os.cpu_count() or 1})


@dataclass(frozen=True)
class PeerTiming:
    """A peer's best `timing` over thread counts: the count that gave it (`threads`) and every count's
    median seconds (`median_s_by_threads`); the JSON fields come from `fields`."""

    timing: Timing
    threads: int
    median_s_by_threads: dict[int, float]

    def fields(self) -> dict[str, Any]:
        """What a report records beside the peer's times: its best thread count and the median at each."""
        return {"torch_threads": self.threads,
                "median_s_by_threads": {str(n): s for n, s in sorted(self.median_s_by_threads.items())}}


def measure_peer(case: Case, repeats: int, budget_s: float | None = None, device: torch.device | str | None = None,
                 settings: Sequence[int] | None = None) -> PeerTiming:
    """`measure(case, ...)` once per `torch.set_num_threads` setting (default `peer_thread_settings()`), keeping
    the fastest median; torch's thread count is restored afterwards. A CUDA `device` is timed at the current
    count only (the host threads only launch its kernels)."""
    previous = torch.get_num_threads()
    if device is not None and torch.device(device).type == "cuda":
        settings = [previous]
    timings: dict[int, Timing] = {}
    try:
        for threads in settings or peer_thread_settings():
            torch.set_num_threads(int(threads))
            timings[int(threads)] = measure(case, repeats, budget_s, device)
    finally:
        torch.set_num_threads(previous)
    best = min(timings, key=lambda n: timings[n].median)
    return PeerTiming(timings[best], best, {n: t.median for n, t in timings.items()})


# -- device naming ------------------------------------------------------------------------
def is_software(renderer: str) -> bool:
    """Whether the GL renderer is a CPU rasteriser (llvmpipe and kin)."""
    return any(name in renderer.lower() for name in SOFTWARE_RENDERERS)


def gl_family(renderer: str) -> str:
    """Which torch device glmip is compared with: "cuda" for a real GPU when CUDA exists, else "cpu"."""
    return "cuda" if torch.cuda.is_available() and not is_software(renderer) else "cpu"


def device_slug(renderer: str) -> str:
    """A short file-name-friendly name of a GL renderer: its GPU model where one is named, else its words.

    "llvmpipe (LLVM 15.0.6, 256 bits)" -> "llvmpipe", "NVIDIA H100 80GB HBM3/PCIe/SSE2" -> "h100",
    "NVIDIA A100-SXM4-80GB/PCIe/SSE2" -> "a100", "NVIDIA GeForce RTX 4090/PCIe/SSE2" -> "nvidia-geforce-rtx-4090".
    """
    words = re.split(r"[^a-z0-9]+", re.sub(r"\(.*?\)|/.*", "", renderer).lower())
    model = next((w for w in words if re.fullmatch(r"[a-z]+[0-9]+[a-z]*", w)), None)
    return model or "-".join(w for w in words if w) or platform.node()


def torch_device_label() -> str:
    """"cuda:<name>" of the first CUDA device where torch has one, else "cpu"."""
    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


# -- reports ------------------------------------------------------------------------------
def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(**versions: str | None) -> dict[str, Any]:
    """The date, host, torch's thread count and the versions (python, torch, glmip and `versions`) a report
    carries at its top."""
    import glmip

    return {"date": now(), "host": platform.node(), "cpu_threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, **versions,
                         "glmip": glmip.__version__}}


def version_of(module: str) -> str | None:
    """`module.__version__`, None where it is not installed."""
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - optional information only
        return None


def machine_info(renderer: str) -> dict[str, Any]:
    """What ran a report: the GL renderer, torch (version, device), CPU count and threads, host, date."""
    return {"gl_renderer": renderer, "device_slug": device_slug(renderer), "torch": torch.__version__,
            "torch_device": torch_device_label(), "cpu_count": os.cpu_count(),
            "cpu_threads": torch.get_num_threads(), "python": platform.python_version(), "host": platform.node(),
            "date": now()}


def write_report(report: dict[str, Any], name: str, out: str | Path | None = None) -> Path:
    """Write `report` (its "device" the GL renderer) as JSON, with a "machine" block (`machine_info`), to `out`,
    default bench/results/<name>-<device slug>.json; returns the path."""
    report = {**report, "machine": machine_info(str(report["device"]))}
    path = Path(out) if out else RESULTS / f"{name}-{device_slug(report['device'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# -- figures and tables -------------------------------------------------------------------
def figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`plt.subplots(*args, **kwargs)` on the headless Agg backend (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out, write (making the folder) and close a matplotlib figure; every bench plot ends here."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_if_possible(plot: Callable[[dict[str, Any], Path], Path], report: dict[str, Any], path: Path | None) -> None:
    """Draw `report` to `path` with `plot` when a path is given, saying so; without matplotlib say that instead."""
    if path is None:
        return
    try:
        print(f"wrote {plot(report, path)}")
    except ImportError:
        print("no plot: matplotlib is not installed")


def with_ratio(text: str, ratio: float | None) -> str:
    """A table cell: `text`, then " (<ratio>×)" where a ratio against the peer exists."""
    return text if ratio is None else f"{text} ({ratio:.2f}×)"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table: the first `left` columns left-aligned, the others right-aligned (numbers)."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
