"""Peak memory of a process and all its descendants, sampled in a background thread.

    with TreeMemorySampler(server_pid) as sampler:
        run_the_job()
    print(sampler.peak.rss_mib, sampler.peak.pss_mib)

Every `interval` seconds the sampler sums, over the process and its
descendants at that moment, the resident set size (RSS) and, where the
platform reports it, the proportional set size (PSS: shared pages split
between the processes that map them, so the sum does not count shared
libraries once per worker). The peaks are the largest sums seen.

Where this process may read physical page frames (Linux, as root), a second
thread also takes the tree's resident set itself: the physical pages mapped by
any of its processes, each counted once, from /proc/<pid>/pagemap. That is
what summed RSS overstates (a library's pages once per process) and PSS
approximates (it splits pages shared with processes outside the tree). One
look takes 0.1 to 0.6 s, so it is sampled as often as that allows.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

MIB = 1 << 20


@dataclass
class TreeMemory:
    """One sample (or the peaks) of a process tree's memory."""

    rss: int = 0
    pss: int | None = None
    processes: int = 0
    resident: int | None = None  # the tree's physical pages, each once (see tree_resident_set)

    @property
    def rss_mib(self) -> float:
        return self.rss / MIB

    @property
    def pss_mib(self) -> float | None:
        return None if self.pss is None else self.pss / MIB

    @property
    def resident_mib(self) -> float | None:
        return None if self.resident is None else self.resident / MIB


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
    """Samples a process tree's memory every `interval` seconds while active, and its
    resident set as often as it can be read."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = TreeMemory()
        self.samples = 0
        self.resident_samples = 0
        self._with_pss = True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

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

    def _sample_resident(self) -> bool:
        now = tree_resident_set(self.pid)
        if now is None:
            return False
        self.resident_samples += 1
        self.peak.resident = max(self.peak.resident or 0, now)
        return True

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._sample()
            if self._stop.wait(max(0.0, self.interval - (time.monotonic() - started))):
                return

    def _run_resident(self) -> None:
        while self._sample_resident() and not self._stop.wait(self.interval):
            pass

    def start(self) -> TreeMemorySampler:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=run, name="tree-memory", daemon=True)
            for run in (self._run, self._run_resident)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> TreeMemory:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._sample()  # one last look, after the job
        if self.resident_samples:
            self._sample_resident()
        return self.peak

    def __enter__(self) -> TreeMemorySampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_PRESENT = np.uint64(1 << 63)
_FRAME = np.uint64((1 << 55) - 1)


def tree_resident_set(pid: int) -> int | None:
    """Bytes of physical memory mapped by `pid` and its descendants, each page once;
    None where page frames cannot be read (not Linux, or not root: the kernel then
    reports every frame as 0)."""
    try:
        root = psutil.Process(pid)
        pids = [root.pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.Error:
        return None
    return resident_set(pids)


def resident_set(pids: list[int]) -> int | None:
    """Bytes of physical memory mapped by any of `pids`, each page once; None where
    page frames cannot be read."""
    frames = []
    for each in pids:
        try:
            frames.append(_frames(each))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a process that ended between listing and reading
        except OSError:
            return None
    if not frames:
        return None
    every = np.unique(np.concatenate(frames))
    if every.size and not every.any():
        return None
    return int(every[every != 0].size) * os.sysconf("SC_PAGE_SIZE")


def _frames(pid: int) -> np.ndarray:
    """The physical frame numbers of a process's present pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    found = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb", 0) as pagemap:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith("---"):
                continue  # reserved, never resident
            low, high = (int(x, 16) for x in span.split("-"))
            pagemap.seek(low // page * 8)
            entries = np.frombuffer(pagemap.read((high - low) // page * 8), np.uint64)
            found.append(entries[(entries & _PRESENT) != 0] & _FRAME)
    return np.concatenate(found) if found else np.empty(0, np.uint64)


def tree_cpu_seconds(pid: int, *, ended_children: bool = False) -> float:
    """User plus system CPU seconds used so far by `pid` and its live descendants
    (all their threads, GDAL's included); with `ended_children`, those of their children
    that ended and were waited for too (workers that end during a call give their CPU
    time to the process that waited for them)."""
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
        if ended_children:
            total += times.children_user + times.children_system
    return total
