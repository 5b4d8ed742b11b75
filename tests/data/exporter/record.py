#!/usr/bin/env python3
"""Record real ``sinfo``/``squeue`` output of the testbed for the exporter's parser tests.

Run as root on the testbed machine (``python3 tests/data/exporter/record.py``). It submits a
few short jobs that cover what the parsers must read (typed and untyped GPUs, a job over two
nodes, a held job, array tasks waiting for a begin time, GPU indices with a gap such as
``IDX:8,10-12``), records the exact commands the exporter runs, then cancels its jobs.
Other people's jobs on the testbed end up in the recording too: that is real output as well.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "src"))

from gpuhub.exporter.slurm import SINFO_ARGV, SQUEUE_ARGV  # noqa: E402

NAME = "gpuhub-exporter-record"


def sbatch(*args: str) -> str:
    argv = ["sbatch", "--parsable", "-J", NAME, "-t", "10", "-o", "/dev/null", *args, "--wrap", "sleep 300"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def wait_running(job: str) -> None:
    for _ in range(100):
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if state.strip() == "RUNNING":
            return
        time.sleep(0.2)
    sys.exit(f"job {job} did not start")


def record(name: str) -> None:
    for argv, suffix in ((SINFO_ARGV, "sinfo"), (SQUEUE_ARGV, "squeue")):
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        (HERE / f"{suffix}-{name}.txt").write_text(out)


def main() -> None:
    try:
        first = sbatch("-p", "gpu", "-w", "n1", "--gres=gpu:v100:2", "-A", "abc@a100")
        wait_running(first)
        wait_running(sbatch("-p", "gpu", "-w", "n1", "--gres=gpu:v100:3", "-A", "physics"))
        subprocess.run(["scancel", first], check=True)
        time.sleep(2)
        wait_running(sbatch("-p", "gpu", "-w", "n1", "--gres=gpu:v100:1", "-A", "abc@h100"))
        wait_running(sbatch("-p", "gpu", "-w", "n2", "--gres=gpu:1", "-A", "lsst"))
        wait_running(sbatch("-p", "gpu", "-N", "2", "--gres=gpu:a100_3g.40gb:1", "-A", "astro"))
        sbatch("-p", "gpu", "--hold", "--gres=gpu:v100:4", "-A", "abc@a100")
        sbatch("-p", "gpu,short", "--begin=now+1hour", "--array=0-1", "--gres=gpu:2", "-A", "physics")
        time.sleep(1)
        record("busy")
    finally:
        subprocess.run(["scancel", "-n", NAME], check=False)
    # Right after a cancel, nodes show "completing" for a moment.
    record("completing")


if __name__ == "__main__":
    main()
