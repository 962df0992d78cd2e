"""What the benchmark scripts share: peak-memory measurement on CPU and GPU, round-robin
timing, and a plain-text table."""
import re
import statistics
import time

import torch

__all__ = ["Glibc", "PeakMemory", "cpu_model", "time_round_robin", "print_table", "synchronize"]


def _rss_mib(field):
    with open("/proc/self/status") as f:
        status = f.read()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024


class Glibc:
    """glibc's mmap and trim thresholds decide whether a freed block leaves the resident set.
    For memory runs (``memory_mode``): a fixed 64 KiB each, so that every large block is
    mmapped and unmapped on free and the RSS high-water mark sees each allocation.  For
    timing runs (``timing_mode``): blocks up to 64 MiB come from the heap, and the heap is
    never trimmed, so that temporaries are reused as in a long-running process, not
    page-faulted in anew each time (which would charge the page faults to the code with
    temporaries).  With a trim threshold of 64 MiB, each training step of RedNet-50 at
    800x1216 page-faulted in 0.6-1.5 GB that the step before had given back."""

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

    def __init__(self):
        import ctypes

        self.libc = ctypes.CDLL("libc.so.6")

    def _set(self, mmap_threshold, trim_threshold):
        self.libc.mallopt(self.M_MMAP_THRESHOLD, mmap_threshold)
        self.libc.mallopt(self.M_TRIM_THRESHOLD, trim_threshold)
        if trim_threshold < 2**20:
            # Free heap pages go back to the OS, so reusing them counts in the RSS again.
            self.libc.malloc_trim(0)

    def memory_mode(self):
        self._set(64 * 1024, 64 * 1024)

    def timing_mode(self):
        self._set(64 * 2**20, 2**31 - 1)  # mallopt takes an int: never trim

    def release(self):
        """Give the free heap back to the OS (between suites: each builds its own models,
        and a heap that is never trimmed would keep every suite's peak)."""
        import gc

        gc.collect()
        self.libc.malloc_trim(0)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Extra memory (MiB, in ``.peak``) that the code in the ``with`` block needs beyond
    what is allocated when it starts: the CUDA allocator's peak on a GPU, the resident-set
    high-water mark on the CPU (Linux; pair it with :meth:`Glibc.memory_mode`)."""

    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _rss_mib("VmRSS")
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        else:
            self.peak = _rss_mib("VmHWM") - self.base


def time_rounds(runs, device, repeat, warmup=1):
    """Milliseconds of each callable in ``runs`` ({name: fn}) in each of ``repeat`` rounds
    (after ``warmup`` rounds), called in turn (A B C A B C ...) so that a noisy machine slows
    all of them alike: {name: [ms of round 1, ms of round 2, ...]}."""
    device = torch.device(device)
    times = {name: [] for name in runs}
    for rnd in range(warmup + repeat):
        for name, fn in runs.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            if rnd >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def time_round_robin(runs, device, repeat, warmup=1):
    """Median milliseconds of each callable in ``runs`` ({name: fn}) over the rounds of
    :func:`time_rounds`."""
    return {name: statistics.median(t)
            for name, t in time_rounds(runs, device, repeat, warmup).items()}


def paired_speed(base, other):
    """(median, lower quartile, upper quartile) of ``base[i] / other[i]``, the speed of
    ``other`` against ``base`` round by round (lists of :func:`time_rounds`): runs of one
    round are seconds apart, so a machine's slow spells, which last longer, cancel in each
    ratio where they would shift the two medians apart."""
    ratios = sorted(b / o for b, o in zip(base, other))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return statistics.median(ratios), quartiles[0], quartiles[-1]


def print_table(rows, header):
    """Prints ``rows`` (lists of strings) under ``header`` in aligned columns."""
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(cell.ljust(wd) for cell, wd in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * wd for wd in widths))


def cpu_model():
    """The CPU's model name and whether it computes bfloat16 natively (AVX-512 BF16 or
    AMX), from /proc/cpuinfo (Linux; "unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown CPU", False
    import re

    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = set((re.search(r"flags\s*:\s*(.*)", info) or [None, ""])[1].split())
    return (name.group(1).strip() if name else "unknown CPU",
            bool(flags & {"avx512_bf16", "amx_bf16"}))
