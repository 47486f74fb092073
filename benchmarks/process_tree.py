"""Peak memory of a process and all its descendants, sampled in a background thread.

    with TreeMemorySampler(server_pid) as sampler:
        run_the_job()
    print(sampler.peak.rss_mib, sampler.peak.pss_mib)

Every `interval` seconds the sampler sums, over the process and its
descendants at that moment, the resident set size (RSS) and, where the
platform reports it, the proportional set size (PSS: shared pages split
between the processes that map them, so the sum does not count shared
libraries once per worker). The peaks are the largest sums seen.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

MIB = 1 << 20


@dataclass
class TreeMemory:
    """One sample (or the peaks) of a process tree's memory."""

    rss: int = 0
    pss: int | None = None
    processes: int = 0

    @property
    def rss_mib(self) -> float:
        return self.rss / MIB

    @property
    def pss_mib(self) -> float | None:
        return None if self.pss is None else self.pss / MIB


def tree_memory(pid: int, *, with_pss: bool = True) -> TreeMemory:
    """RSS and PSS summed over `pid` and its descendants, now."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return TreeMemory()
    rss, pss, counted = 0, 0 if with_pss else None, 0
    for process in processes:
        try:
            if with_pss:
                info = process.memory_full_info()
                rss += info.rss
                if pss is not None and hasattr(info, "pss"):
                    pss += info.pss
                else:
                    pss = None
            else:
                rss += process.memory_info().rss
            counted += 1
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a process that ended between listing and reading
        except psutil.AccessDenied:
            pss = None
    return TreeMemory(rss, pss, counted)


class TreeMemorySampler:
    """Samples a process tree's memory every `interval` seconds while active."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = TreeMemory()
        self.samples = 0
        self._with_pss = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        now = tree_memory(self.pid, with_pss=self._with_pss)
        if now.pss is None:
            self._with_pss = False  # not available here: RSS only, and faster
        self.samples += 1
        self.peak.rss = max(self.peak.rss, now.rss)
        self.peak.processes = max(self.peak.processes, now.processes)
        if now.pss is None:
            self.peak.pss = None
        elif self.samples == 1 or self.peak.pss is not None:
            self.peak.pss = max(self.peak.pss or 0, now.pss)

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._sample()
            if self._stop.wait(max(0.0, self.interval - (time.monotonic() - started))):
                return

    def start(self) -> TreeMemorySampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> TreeMemory:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()  # one last look, after the job
        return self.peak

    def __enter__(self) -> TreeMemorySampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by `pid` and its live descendants
    (all their threads, GDAL's included)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total
