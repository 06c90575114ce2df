"""Upgrade check: a worker of an earlier release writes its state, this checkout's worker
takes over from the changelog topics, and the results must equal the simulator's truth.

    .venv/bin/python scripts/upgrade_check.py REV [--dir D]

``REV`` is any git revision (a release tag, ``HEAD~3``); it is checked out in a temporary
worktree. The earlier worker handles the first half of a simulated program (every fraud
injection on) and stops cleanly (SIGTERM); this checkout's worker restores every state
table from what the earlier one wrote and handles the rest. Run it whenever a state
record's layout changes (``streams/records.py``: ``FORMAT``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import stack  # noqa: E402
from stack import assert_paid_as_the_truth, get, running_stack, wait_for  # noqa: E402

from ripple.simulator import SimConfig, generate, parse_inject, produce  # noqa: E402
from sinks.clickhouse import ClickHouse  # noqa: E402


def run(earlier: Path, base: Path) -> int:
    with running_stack(base) as st:
        st.sink()
        totals = f"http://127.0.0.1:{st.web}/api/totals"
        stack.ROOT = earlier  # the worker runs the earlier release's code
        old = st.worker(log="worker-earlier.log")
        ds = generate(SimConfig(seed=7, start_ms=1_767_225_600_000, views=4000, inject=parse_inject("all")))
        produce(ds.reference, st.bootstrap)
        half = len(ds.events) // 2
        produce(ds.events[:half], st.bootstrap)
        wait_for(lambda: get(totals).get("attributed", 0) > 20, 120, "the earlier worker's first credits")
        time.sleep(15)  # let it write state for most of the first half
        old.send_signal(signal.SIGTERM)
        old.wait()
        print(f"earlier release stopped at {get(totals)}", flush=True)
        stack.ROOT = ROOT
        st.worker(log="worker-this.log")
        produce(ds.events[half:], st.bootstrap)
        want = sum(1 for v in ds.truth["last_click"].values() if v)

        def done() -> bool:
            t: dict[str, Any] = get(totals)
            lag = sum(v["lag"] for v in get(f"http://127.0.0.1:{st.web}/healthz").get("topics", {}).values())
            return bool(t["attributed"] >= want and t["chain_nodes"] >= len(ds.truth["chain_parents"]) and lag == 0)

        wait_for(done, 240, "this release's worker to finish the program")
        time.sleep(5)
        st.stop()
        ch = ClickHouse(f"chdb://{base / 'sink' / 'clickhouse'}")
        assert_paid_as_the_truth(ch, ds.truth, "after the upgrade")
        errors = [line for line in (base / "worker-this.log").read_text().splitlines() if "Traceback" in line]
        if errors:
            print(f"this release's worker logged {len(errors)} tracebacks: see {base / 'worker-this.log'}")
            return 1
    print(f"upgrade OK: {want} attributed orders, every table as the truth says (logs in {base})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier release: a git revision")
    parser.add_argument("--dir", type=Path, help="where the logs and data go (default: a new temporary dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="ripple-upgrade-"))
    earlier = Path(tempfile.mkdtemp(prefix="ripple-earlier-")) / "tree"
    git = shutil.which("git") or "git"
    made = subprocess.run([git, "-C", str(ROOT), "worktree", "add", "--detach", str(earlier), args.rev], check=False)
    if made.returncode != 0:
        print(f"upgrade_check: cannot check out {args.rev!r}", file=sys.stderr)
        return 2
    try:
        return run(earlier, base)
    finally:
        subprocess.run([git, "-C", str(ROOT), "worktree", "remove", "--force", str(earlier)], check=False)


if __name__ == "__main__":
    sys.exit(main())
