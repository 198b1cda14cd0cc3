"""Helpers shared by the benchmark scripts: machine description, matmul peak, timing, JSON, peak memory.

Every figure is a median of timed runs after warm-up; speed-ups are ratios measured in the same run,
so that load from other processes on a shared machine affects both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    """What the figures were measured on (versions, cores, threads, CPU flags that matter, load)."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        from mirror_unet_hf.sliding_window import fast_bf16_available

        info["cpu_fast_bf16"] = fast_bf16_available("cpu")
    except Exception:  # benchmarks also run against older checkouts
        pass
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def timed(function, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of `function()` after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        runs.append(time.perf_counter() - start)
    return runs


def summary(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "runs": [round(r, 4) for r in runs]}


def matmul_peak(repeats: int = 5, sizes: tuple[int, ...] = (1024, 2048)) -> dict:
    """GFLOP/s of square fp32 and bf16 matmuls (2·n³ FLOP): this CPU's reference "peak".

    Measured with all torch threads and with one thread; the peak is the larger of the best
    all-thread run and threads × the best one-thread run. On a shared machine other processes
    slow multi-threaded runs far more than single-threaded ones (a thread that loses its core stalls
    the others), so the one-thread figure keeps the peak from being underestimated under load.
    """
    import torch

    threads = torch.get_num_threads()
    out = {}
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            entry = {"threads": threads}
            for label, count in (("all_threads", threads), ("one_thread", 1)):
                torch.set_num_threads(count)
                best, medians = 0.0, []
                for size in sizes:
                    a = torch.randn(size, size).to(dtype)
                    b = torch.randn(size, size).to(dtype)
                    runs = timed(lambda: torch.mm(a, b), repeats, warmup=2)
                    flops = 2.0 * size**3
                    best = max(best, flops / min(runs) / 1e9)
                    medians.append(flops / statistics.median(runs) / 1e9)
                entry[f"{label}_best_gflops"] = best
                entry[f"{label}_median_gflops"] = max(medians)
            torch.set_num_threads(threads)
            entry["peak_gflops"] = max(entry["all_threads_best_gflops"], threads * entry["one_thread_best_gflops"])
            out[name] = entry
        return out
    finally:
        torch.set_num_threads(threads)


def memory_mib() -> dict:
    """This process's resident memory now (`VmRSS`) and its peak (`VmHWM`), MiB, from /proc/self/status.

    Measure the peak inside the measured process: `ru_maxrss` of a spawned child also counts the
    parent's resident memory at the time of the spawn (Linux keeps the larger of the two across exec),
    so a benchmark parent that made a large study would inflate every child's figure.
    """
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        values = {"VmRSS": None, "VmHWM": peak}
    return {"rss_mib": values.get("VmRSS"), "peak_rss_mib": values.get("VmHWM")}


def run_child(command: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[int, float, float]:
    """Run `command`; return (exit code, wall seconds, `ru_maxrss` of that process in MiB).

    The last figure is an upper bound (see `memory_mib`): children report their own peak for the tables.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=str(ROOT))
    deadline = None if timeout is None else start + timeout
    try:
        while True:
            # wait4 (not Popen.poll/wait, which reap the child and lose its resource usage)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG if deadline is not None else 0)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                return process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024.0
            if time.perf_counter() > deadline:
                process.kill()
                _, _, usage = os.wait4(process.pid, 0)
                process.returncode = 124
                return 124, time.perf_counter() - start, usage.ru_maxrss / 1024.0
            time.sleep(0.2)
    except BaseException:
        if process.returncode is None:
            process.kill()
            os.wait4(process.pid, 0)
            process.returncode = -9
        raise


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """A small aligned text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if title:
        print(title)
    for index, row in enumerate(cells):
        print(
            "  ".join(
                value.rjust(width) if i else value.ljust(width) for i, (value, width) in enumerate(zip(row, widths))
            )
        )
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
