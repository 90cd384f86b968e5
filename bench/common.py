"""Shared helpers of the benchmarks: machine description, interleaved timing, tables, result files.

Every figure the benchmarks report is a ratio of times measured side by side in one run: the cases of a
benchmark run in rounds, each round runs every case once (in a rotated order, so no case always runs
first or last), and a ratio is taken inside each round before the median over rounds. A noisy machine
(other jobs) then slows both sides of a ratio alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, memory, library versions, thread counts."""
    cpu_model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        cpu_model = platform.processor() or "unknown"
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import transformers

    info = {
        "cpu_model": cpu_model,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma"}),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.is_available(),
        "code": code_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def code_version() -> dict:
    """Which code was measured: git HEAD, uncommitted changes under gprune/, and a hash of gprune/*.py
    (the working tree is shared and may change between runs)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    digest = hashlib.sha256()
    for path in sorted((root / "gprune").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    dirty = [line.split(maxsplit=1)[1] for line in git("status", "--porcelain", "--", "gprune").splitlines() if line.strip()]
    return {"head": git("rev-parse", "--short", "HEAD") or "unknown", "gprune_uncommitted": dirty,
            "gprune_sha256": digest.hexdigest()[:12]}


def code_line(version: dict) -> str:
    dirty = version["gprune_uncommitted"]
    return (f"git {version['head']}" + (f" + uncommitted {', '.join(dirty)}" if dirty else "")
            + f" (gprune/*.py sha256 {version['gprune_sha256']})")


def machine_line(info: dict) -> str:
    return (f"{info['cpu_model']} ({', '.join(info['cpu_flags'])}), {info['usable_cpus']} usable of "
            f"{info['logical_cpus']} logical CPUs, {info['memory_gib']} GiB; torch {info['torch']} "
            f"({info['blas']}, {info['torch_threads']} threads), transformers {info['transformers']}, "
            f"python {info['python']}; load average at start {_load(info['load_average_at_start'])}"
            + (f". Code: {code_line(info['code'])}" if "code" in info else ""))


def _load(load) -> str:
    return "n/a" if load is None else "/".join(f"{x:.2f}" for x in load)


class CpuMeter:
    """How much of the machine's CPU time other processes took while a call ran (from /proc/stat).

    `share(before, after)` = (all busy CPU time − this process's CPU time) ÷ (usable CPUs × wall time):
    0 on a quiet machine, ~0.5 when another job kept one of two cores busy. NaN where /proc/stat is missing.
    """

    def __init__(self, also_ours: tuple[int, ...] = (), include_children: bool = False):
        """`also_ours`: pids of processes that belong to the measurement (e.g. the app server);
        `include_children`: the measured call runs subprocesses and waits for them (their CPU time is ours)."""
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.also_ours = also_ours
        self.include_children = include_children

    def snapshot(self) -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:9]]
            busy = (sum(values) - values[3] - values[4]) / self.ticks  # minus idle and iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        times = os.times()
        ours = times.user + times.system
        if self.include_children:  # finished, waited-for children only
            ours += times.children_user + times.children_system
        for pid in self.also_ours:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                ours += (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime
            except (OSError, ValueError, IndexError):
                pass
        return time.perf_counter(), busy, ours

    def share(self, before, after) -> float:
        wall = after[0] - before[0]
        other = (after[1] - before[1]) - (after[2] - before[2])
        # /proc/stat counts whole clock ticks: calls much shorter than a tick say little.
        return max(0.0, other) / (self.cpus * wall) if wall > 0 else float("nan")


class Quiet:
    """Run a call when the machine is quiet and again (up to `retries` times) if other processes took more
    than `max_share` of the CPUs while it ran; the last attempt is kept whatever it saw.

    On a shared machine a 2-thread run slows down ~2× whenever another job holds a core; those samples say
    nothing about the code. Every attempt is counted and reported, none is hidden.
    """

    def __init__(self, max_share: float = 0.1, retries: int = 3, window: float = 0.1, max_wait: float = 20.0,
                 enabled: bool = True, also_ours: tuple[int, ...] = (), include_children: bool = False):
        self.meter = CpuMeter(also_ours, include_children)
        self.max_share, self.retries, self.window, self.max_wait = max_share, retries, window, max_wait
        self.enabled = enabled
        self.calls = self.retried = 0

    def wait(self) -> None:
        deadline = time.perf_counter() + self.max_wait
        while time.perf_counter() < deadline:
            before = self.meter.snapshot()
            time.sleep(self.window)
            share = self.meter.share(before, self.meter.snapshot())
            if not share > self.max_share:  # NaN (no /proc/stat) counts as quiet
                return

    def run(self, fn: Callable[[], object], sync: Callable[[], None] = lambda: None):
        """Returns `(result, seconds, foreign_share)` of the kept attempt."""
        self.calls += 1
        for attempt in range(self.retries + 1):
            if self.enabled:
                self.wait()
            sync()
            before = self.meter.snapshot()
            start = time.perf_counter()
            result = fn()
            sync()
            elapsed = time.perf_counter() - start
            share = self.meter.share(before, self.meter.snapshot())
            if not self.enabled or not share > self.max_share or attempt == self.retries:
                return result, elapsed, share
            self.retried += 1

    def summary(self) -> str:
        if not self.enabled:
            return "Calls were not re-run under contention (--no-quiet)."
        return (f"Each call started once other processes used < {self.max_share:.0%} of the CPUs (0.1 s probe) and "
                f"was re-run (≤ {self.retries}×) if they took more while it ran: {self.retried} re-runs "
                f"for {self.calls} timed calls.")


def interleaved(cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                sync: Callable[[], None] | None = None, progress: bool = False, quiet: Quiet | None = None
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds of every case in every round; round r runs the cases starting at offset r.

    `warmup` extra rounds run first and are discarded (page faults, lazy library loading, allocator).
    Returns `(times, foreign)`: `foreign[name][r]` is the CPU share other processes took during that call.
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    foreign: dict[str, list[float]] = {name: [] for name in names}
    quiet = quiet or Quiet(enabled=False)
    sync = sync or (lambda: None)
    for round_index in range(-warmup, rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if round_index < 0:
                sync()
                cases[name]()
                continue
            _, elapsed, share = quiet.run(cases[name], sync)
            times[name].append(elapsed)
            foreign[name].append(share)
        if progress:
            label = "warm-up" if round_index < 0 else f"round {round_index + 1}/{rounds}"
            print(f"  {label} done", file=sys.stderr, flush=True)
    return times, foreign


def contention_line(foreign: list[float]) -> str:
    values = [v for v in foreign if v == v]
    if not values:
        return "CPU use of other processes: not measurable here (no /proc/stat)."
    busy = sum(v > 0.2 for v in values) / len(values)
    return (f"Other processes took a median {statistics.median(values):.0%} of the CPUs during the timed calls; "
            f"{busy:.0%} of the calls ran while they took more than 20 %.")


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of `numerator[r] / denominator[r]` (both measured in the same round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def spread(values: list[float]) -> tuple[float, float]:
    """Lower and upper quartile (for a ± column)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def median(values: list[float]) -> float:
    return statistics.median(values)


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_results(name: str, data: dict, markdown: str, out: Path = RESULTS) -> tuple[Path, Path]:
    """`out/name.json` (everything, machine included) and `out/name.md` (the printed tables)."""
    out.mkdir(parents=True, exist_ok=True)
    started = data.get("machine", {}).get("code")
    if started is not None and code_version()["gprune_sha256"] != started["gprune_sha256"]:
        data["code_changed_during_run"] = code_version()
        markdown += ("\n\n**Warning: gprune/ changed while this benchmark ran** (now "
                     f"{code_line(data['code_changed_during_run'])}); the numbers may mix two versions.")
        print("warning: gprune/ changed during the run", file=sys.stderr)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def clustered_features(n: int, d: int, *, clusters: int = 48, seed: int = 0,
                       grid: tuple[int, int] | None = None) -> torch.Tensor:
    """`(n, d)` fp32 features with cluster structure, like post-projector tokens of an image.

    Tokens of one cluster share a unit centre; each token adds Gaussian noise of its own strength
    (0.6–1.2 × the centre's norm), so cosine similarities inside a cluster spread around G-Prune's 0.5
    threshold (0.37–0.74) and the graph has a realistic mix of edges; norms vary log-normally (× 10).
    With `grid=(rows, cols)` (n = rows·cols) clusters are spatial blocks of 6×6 cells, 25 % of tokens
    re-assigned at random, as objects in an image would be.
    """
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, d, generator=generator), dim=1)
    if grid is not None:
        rows, cols = grid
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        block = ((r // 6) * 131 + (c // 6) * 71).reshape(-1) % clusters
        shuffle = torch.rand(n, generator=generator) < 0.25
        assignment = torch.where(shuffle, torch.randint(0, clusters, (n,), generator=generator), block)
    else:
        assignment = torch.randint(0, clusters, (n,), generator=generator)
    strength = 0.6 + 0.6 * torch.rand(n, 1, generator=generator)
    features = torch.randn(n, d, generator=generator).mul_(strength / d ** 0.5).add_(centres[assignment])
    scale = torch.exp(0.3 * torch.randn(n, 1, generator=generator)) * 10.0
    return features.mul_(scale).contiguous()


def packed_features(rows: int, cols: int, d: int, base_tokens: int = 576, seed: int = 0) -> torch.Tensor:
    """A whole packed block `[base | rows × (cols + 1)]` of clustered features (newlines: one shared vector)."""
    side = int(round(base_tokens ** 0.5))
    base = clustered_features(base_tokens, d, seed=seed, grid=(side, side) if side * side == base_tokens else None)
    grid = clustered_features(rows * cols, d, seed=seed + 1, grid=(rows, cols)).view(rows, cols, d)
    newline = clustered_features(1, d, seed=seed + 2).expand(rows, 1, d)
    return torch.cat([base, torch.cat([grid, newline], dim=1).reshape(-1, d)]).contiguous()
