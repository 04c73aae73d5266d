"""Wall time and peak memory of ``knowtune demo`` (or ``knowtune demo --methods``) against their budgets.

Runs the demo in a fresh output directory as a subprocess and samples, every 0.5 s, the
proportional set size (PSS, from ``/proc/<pid>/smaps_rollup``; RSS where that is missing) summed
over the demo's whole process tree, its worker processes included: shared pages count once.
Budgets (issues 4 and 5): the demo in 10 minutes and 4 GiB on 2 CPU cores; the method
comparison study in 15 minutes. Last line:
``seconds=<s> budget_s=<b> time_vs_budget=<ratio> peak_gib=<g> memory_vs_budget=<ratio>``.

    .venv/bin/python benchmarks/demo.py [--methods] [--out DIR] [--keep]

Linux only (``/proc``). The demo's own output (stderr) goes to ``OUT.log``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMORY_BUDGET_GIB = 4.0


def _children(pid: int) -> list[int]:
    """``pid`` and every descendant, from the parent links in ``/proc/*/stat``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def _memory_kib(pid: int) -> int:
    """PSS of one process in KiB (RSS when smaps_rollup is unreadable), 0 when it has gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1])
        except OSError:
            continue
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", action="store_true", help="benchmark `knowtune demo --methods` (budget 15 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="demo output directory (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the output directory")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="knowtune-demo-bench-")) / "demo"
    if out.exists():
        sys.exit(f"{out} exists: the benchmark needs a fresh directory (a rerun would skip the finished work)")
    budget_s = 900.0 if args.methods else 600.0
    command = [sys.executable, "-m", "knowtune", "demo", "--out", str(out)] + (["--methods"] if args.methods else [])
    log_path = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    peak_kib = 0
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        while process.poll() is None:
            peak_kib = max(peak_kib, sum(_memory_kib(pid) for pid in _children(process.pid)))
            time.sleep(0.5)
        stdout = process.stdout.read() if process.stdout else ""
    seconds = time.monotonic() - start
    if process.returncode != 0:
        sys.exit(f"knowtune demo failed with status {process.returncode}; see {log_path}")
    print(stdout.strip())
    peak_gib = peak_kib / 2**20
    if args.out is None and not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    print(f"seconds={seconds:.0f} budget_s={budget_s:.0f} time_vs_budget={seconds / budget_s:.2f} "
          f"peak_gib={peak_gib:.2f} memory_vs_budget={peak_gib / MEMORY_BUDGET_GIB:.2f}")


if __name__ == "__main__":
    main()
