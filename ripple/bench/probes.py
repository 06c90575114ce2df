"""How ``ripple bench`` watches its processes: Prometheus scrapes, histogram quantiles, peak RSS,
child processes and py-spy profiles."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from ripple.bench.figures import ROOT, BenchError
from ripple.config import SECURITY_VARIABLES


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a loopback address we started
        body: bytes = resp.read()
        return body


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text page: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = get(url).decode()
    return [
        (s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text) for s in fam.samples
    ]


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def buckets(samples: list[tuple[str, dict[str, str], float]], name: str) -> dict[float, float]:
    """Cumulative counts of a histogram by upper bound (``+Inf`` as ``inf``)."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{name}_bucket":
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of the observations between two readings of a histogram, linearly
    interpolated within its bucket (bucket resolution). None without observations; an
    observation beyond the last finite bound counts as that bound."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= target and cum > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (target - below) / (cum - below)
        lower, below = bound, cum
    return lower


def peak_rss(pid: int) -> int | None:
    """``VmHWM`` of a live process, in bytes (Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def child_env(partitions: int) -> dict[str, str]:
    env = {**os.environ, "RIPPLE_PARTITIONS": str(partitions)}  # Ripple's defaults otherwise
    for name in ("RIPPLE_WEB_PORT", "RIPPLE_BOOTSTRAP", "RIPPLE_CLICKHOUSE", "RIPPLE_DATA_DIR"):
        env.pop(name, None)  # given as flags
    for name in SECURITY_VARIABLES:
        env.pop(name, None)  # the bench's own embedded broker speaks PLAINTEXT on loopback
    return env


class Child:
    """A subprocess with its log file; stopped with SIGTERM, killed if it lingers."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            print(tail(self.log), file=sys.stderr)
            raise BenchError(f"{self.name} exited with code {self.proc.returncode} (log: {self.log})")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Profiler:
    """``py-spy record`` attached to a running process; collapsed stacks, one line per stack."""

    def __init__(self, pid: int, out: Path, log: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy: pip install py-spy (it is in the [dev] extra)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking"]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen([*argv, "--output", str(out)], stdout=fh, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hot_spots(collapsed: str, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, share of samples inside it, share of samples in it as the innermost frame),
    the ``top`` functions by inclusive share, from py-spy's collapsed stacks."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for name in set(frames[1:]):  # the first frame is the process or thread
            inclusive[name] = inclusive.get(name, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return []
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    # the entry points hold every sample: skip frames present in (almost) all of them
    ranked = [(name, n) for name, n in ranked if n < 0.97 * total][:top]
    return [(name, n / total, own.get(name, 0) / total) for name, n in ranked]


def profile_report(path: Path, title: str, top: int = 15) -> str:
    try:
        spots = hot_spots(path.read_text(errors="replace"), top)
    except OSError:
        return f"{title}: no profile at {path}"
    lines = [f"{title} ({path}): share of samples, inclusive / own"]
    lines += [f"  {inc * 100:5.1f} % {own_ * 100:5.1f} %  {name}" for name, inc, own_ in spots]
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------
