"""Timing and memory probes for alternated, noise-tolerant comparisons on shared machines.

Two paths are never timed in separate blocks: each round runs one step of every path in turn,
and a ratio is the median of the per-round ratios, so load that comes and goes while the
benchmark runs hits both sides alike. Each step also records the process CPU time, which other
processes' load disturbs much less than wall time.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
MIB = 1024 * 1024
PROBE_MARK = "PROBE"  # prefix of the protocol lines of benchmarks/probe.py


def _status_kib(field_name: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


class PeakMemory:
    """Peak memory of one block above what was resident when it started, in MiB.

    CUDA: the allocator's peak. CPU: the kernel's resident high-water mark, reset through
    /proc/self/clear_refs after returning freed heap memory with malloc_trim, so what one step
    allocates shows up even after a bigger step ran before it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc: ctypes.CDLL | None = None
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self.available = device.type == "cuda" or self._can_reset()
        self._base = 0.0

    def _can_reset(self) -> bool:
        try:
            CLEAR_REFS.write_text(RESET_PEAK_RSS)
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / MIB
            return
        if not self.available:
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        CLEAR_REFS.write_text(RESET_PEAK_RSS)
        self._base = (_status_kib("VmRSS") or 0) / 1024

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB - self._base
        if not self.available:
            return None
        peak = _status_kib("VmHWM")
        return None if peak is None else max(0.0, peak / 1024 - self._base)


@dataclass
class Samples:
    """Per-step measurements of one path."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        return {
            "step_s": _median(self.wall_s),
            "step_cpu_s": _median(self.cpu_s),
            "peak_step_mib": _median(self.peak_mib),
            "samples": len(self.wall_s),
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def timed(
    step: Callable[[], object], device: torch.device, memory: PeakMemory | None = None
) -> tuple[float, float, float | None]:
    """(wall s, process CPU s, peak MiB) of one call."""
    if memory is not None:
        memory.start()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = memory.stop() if memory is not None else None
    return wall, cpu, peak


def alternate(
    paths: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    *,
    warmup: int = 1,
    memory: PeakMemory | None = None,
    deadline: float | None = None,
) -> dict[str, Samples]:
    """Run ``warmup`` untimed rounds, then up to ``rounds`` timed rounds of one step per path.

    Stops early (after at least one timed round) when ``time.monotonic()`` passes ``deadline``.
    """
    for _ in range(warmup):
        for step in paths.values():
            step()
    samples = {name: Samples() for name in paths}
    for r in range(rounds):
        if r > 0 and deadline is not None and time.monotonic() > deadline:
            break
        for name, step in paths.items():
            wall, cpu, peak = timed(step, device, memory)
            samples[name].wall_s.append(wall)
            samples[name].cpu_s.append(cpu)
            if peak is not None:
                samples[name].peak_mib.append(peak)
    return samples


def ratio(slow: Samples, fast: Samples, cpu: bool = False) -> float | None:
    """Median over rounds of slow/fast: >1 means ``fast`` is faster."""
    a, b = (slow.cpu_s, fast.cpu_s) if cpu else (slow.wall_s, fast.wall_s)
    pairs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
    return statistics.median(pairs) if pairs else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
