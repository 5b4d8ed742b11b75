"""Accounting ingest and report speed, side by side with a naive baseline, on 1,000,000 sacct lines.

    python benchmarks/accounting.py [--lines 1000000] [--repeat N] [--workdir DIR] [--keep]

Generates realistic ``sacct -X -D -P`` output (gpuhub's --format: arrays, requeued runs, running
and pending jobs, CPU-only jobs, MIG and untyped GRES, jobs crossing month ends), streamed to a
file, then measures in one run:

  * baseline: a Python loop splitting each line + sqlite3 executemany of every field into one
    table, then GROUP BY month, project over it;
  * gpuhub: parse_sacct + UsageStore.ingest into a fresh SQLite file, end to end from the file to
    committed records and rollups (target >= 300,000 rows/s, rows = sacct lines read), the same
    file ingested again (idempotent: nothing changes), and the report by project and month from
    the rollups (target < 0.1 s);
  * peak RSS of the gpuhub ingest for a quarter of the lines vs all of them (flat: streaming), of
    the writing process and of the parser process it forks for a large input.

``--repeat N`` measures the two ingests N times, alternately, and shows the best and the worst of
each: on a shared machine one run says little.
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from gpuhub.accounting.records import from_epoch, to_epoch  # noqa: E402

PARTITIONS = [  # (partition, gres type or None for untyped-only accounting, GPUs per node, weight)
    ("gpu_p13", "v100", 4, 3), ("gpu_p2", "v100", 8, 1), ("gpu_p5", "a100", 8, 3), ("gpu_p6", "h100", 4, 2),
    ("gpu_mig", "a100_3g.40gb", 2, 1), ("gpu_old", None, 4, 1),
]
STATES = [("COMPLETED", 70), ("FAILED", 9), ("CANCELLED by {uid}", 7), ("TIMEOUT", 5), ("OUT_OF_MEMORY", 2),
          ("NODE_FAIL", 1), ("RUNNING", 2), ("PENDING", 2), ("PREEMPTED", 2)]


def generate(path: Path, lines: int, seed: int = 7) -> None:
    """Stream ``lines`` sacct lines to ``path`` (never more than one line in memory)."""
    rnd = random.Random(seed)
    users = [f"u{n:04d}" for n in range(400)]
    projects = [f"{rnd.choice('abcdefghij')}{rnd.choice('xyz')}{n:02d}" for n in range(60)]
    user_projects = {u: rnd.sample(projects, rnd.choice((1, 1, 2, 3))) for u in users}
    parts = [p for p in PARTITIONS for _ in range(p[3])]
    states = [s for s, w in STATES for _ in range(w)]
    t = to_epoch("2025-01-01T00:00:00")
    step = (to_epoch("2026-01-01T00:00:00") - t) / lines
    job = 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < lines:
            job += 1
            t += rnd.expovariate(1 / step)
            user = rnd.choice(users)
            partition, gres, per_node, _ = rnd.choice(parts)
            account = f"{rnd.choice(user_projects[user])}@{(gres or 'v100')[:4]}"
            cpu_only = rnd.random() < 0.1
            nodes = 1 if rnd.random() < 0.85 else rnd.choice((2, 4, 8, 16))
            gpus = nodes * (per_node if nodes > 1 else rnd.choice((1, 1, 2, 4, per_node)))
            submit = int(t)
            start = submit + int(rnd.expovariate(1 / 1800))
            elapsed = int(min(rnd.lognormvariate(7.5, 1.6), 100 * 3600))
            state = rnd.choice(states).format(uid=1000 + users.index(user))
            # 1% requeued: an earlier run ended REQUEUED, then the job was submitted again (same id).
            runs = [(submit, start, elapsed // 3, "REQUEUED")] if rnd.random() < 0.01 else []
            if runs:
                submit = start + elapsed // 3
                start = submit + 60
            runs.append((submit, start, elapsed, state))
            job_ref = f"{job - 3}_{rnd.randint(0, 99)}" if rnd.random() < 0.05 else str(job)  # array task
            for sub, beg, el, st in runs:
                if st == "PENDING":
                    s_txt, e_txt, el, tres = "Unknown", "Unknown", 0, ""
                else:
                    s_txt = from_epoch(beg)
                    e_txt = "Unknown" if st == "RUNNING" else from_epoch(beg + el)
                    items = [f"billing={gpus * 10}", f"cpu={gpus * 10}", f"mem={gpus * 40000}M", f"node={nodes}"]
                    if not cpu_only:
                        items.append(f"gres/gpu={gpus}")
                        if gres:
                            items.append(f"gres/gpu:{gres}={gpus}")
                    tres = ",".join(sorted(items))
                out.write(f"{job}|{job_ref}|{user}|{account}|{partition}|qos_gpu-t3|{st}|{from_epoch(sub)}|"
                          f"{s_txt}|{e_txt}|{el}|{tres}|{nodes}|{gpus * 10}|jean-zay\n")
                written += 1


# --- baseline -----------------------------------------------------------------------------------

_GPU_RE = re.compile(r"gres/gpu=(\d+)")


def baseline(path: Path, db_path: Path) -> tuple[float, float, int]:
    _remove_db(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("""CREATE TABLE jobs (job_id_raw, job_id, user, account, partition, qos, state, submit, start, end,
                  elapsed INTEGER, alloc_tres, nnodes INTEGER, ncpus INTEGER, cluster, gpus INTEGER)""")
    t0 = time.perf_counter()
    rows = []
    with open(path, encoding="utf-8") as src:
        for line in src:
            f = line.rstrip("\n").split("|")
            m = _GPU_RE.search(f[11])
            rows.append((*f[:10], int(f[10]), f[11], int(f[12]), int(f[13]), f[14], int(m.group(1)) if m else 0))
    db.execute("BEGIN")
    db.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("COMMIT")
    ingest = time.perf_counter() - t0
    n = len(rows)
    del rows
    t0 = time.perf_counter()
    db.execute("""SELECT substr(start, 1, 7) AS month, substr(account, 1, instr(account || '@', '@') - 1) AS project,
                         SUM(gpus * elapsed) / 3600.0 FROM jobs WHERE gpus > 0 AND start != 'Unknown'
                  GROUP BY month, project ORDER BY month, project""").fetchall()
    report = time.perf_counter() - t0
    db.close()
    return ingest, report, n


# --- gpuhub -------------------------------------------------------------------------------------


def gpuhub_ingest(path: Path, db_path: Path) -> tuple[float, int, object]:
    from gpuhub.accounting.sacct import ParseStats, parse_sacct
    from gpuhub.accounting.store import open_store

    store = open_store(str(db_path))
    stats = ParseStats()
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as src:
        result = store.ingest("jean-zay", parse_sacct(src, stats=stats))
    seconds = time.perf_counter() - t0
    store.close()
    return seconds, stats.lines, result


def gpuhub_report(db_path: Path) -> tuple[float, int]:
    from gpuhub.accounting.report import build_report
    from gpuhub.accounting.store import Filters, open_store

    store = open_store(str(db_path))
    t0 = time.perf_counter()
    report = build_report(store, ["project", "month"], Filters())
    seconds = time.perf_counter() - t0
    store.close()
    return seconds, len(report.rows)


def _child_ingest(path: str, db_path: str) -> None:
    seconds, lines, _ = gpuhub_ingest(Path(path), Path(db_path))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked parent's memory across exec.
    status = Path("/proc/self/status").read_text()
    peak = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    parser = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the forked parser, if any (KiB)
    print(f"{seconds} {lines} {peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {parser}")


def peak_rss(path: Path, db_path: Path) -> tuple[float, int, int, int]:
    """Ingest in a fresh process: (seconds, lines, peak RSS of the writer and of the parser in KiB)."""
    _remove_db(db_path)
    out = subprocess.run([sys.executable, __file__, "--child-ingest", str(path), str(db_path)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), int(out[3])


def _remove_db(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="measure both ingests N times")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child-ingest", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ingest:
        _child_ingest(*args.child_ingest)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpuhub-acct-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / "sacct-full.txt", work / "sacct-quarter.txt"
    t0 = time.perf_counter()
    generate(big, args.lines)
    generate(small, args.lines // 4)
    size = big.stat().st_size / 1e6
    print(f"generated {args.lines:,} sacct lines ({size:.0f} MB) and {args.lines // 4:,} in "
          f"{time.perf_counter() - t0:.1f} s under {work}")
    b_runs, g_runs = [], []
    for _ in range(max(1, args.repeat)):
        b_ingest, b_report, n = baseline(big, work / "baseline.sqlite")
        b_runs.append(b_ingest)
        _remove_db(work / "gpuhub.sqlite")
        g_ingest, lines, result = gpuhub_ingest(big, work / "gpuhub.sqlite")
        g_runs.append(g_ingest)
    again, _, result2 = gpuhub_ingest(big, work / "gpuhub.sqlite")
    g_report, nrows = gpuhub_report(work / "gpuhub.sqlite")
    _, small_lines, small_rss, small_parser = peak_rss(small, work / "gpuhub-quarter.sqlite")
    _, _, big_rss, big_parser = peak_rss(big, work / "gpuhub-rss.sqlite")

    print()
    print(f"{'':44} {'baseline':>14} {'gpuhub':>14}  target")
    print(f"{'ingest, rows/s (' + format(lines, ',') + ' sacct lines)':44} {n / min(b_runs):>14,.0f} "
          f"{lines / min(g_runs):>14,.0f}  >= 300,000")
    if len(g_runs) > 1:
        print(f"{'  slowest of ' + str(len(g_runs)) + ' runs, rows/s':44} {n / max(b_runs):>14,.0f} "
              f"{lines / max(g_runs):>14,.0f}")
    print(f"{'ingest, seconds':44} {min(b_runs):>14.2f} {min(g_runs):>14.2f}")
    print(f"{'report by project and month, seconds':44} {b_report:>14.3f} {g_report:>14.4f}  < 0.1")
    print(f"{'re-ingest of the same lines, rows/s':44} {'':>14} {lines / again:>14,.0f}  (all unchanged)")
    for label, count, rss, parser_rss in ((format(small_lines, ","), small_lines, small_rss, small_parser),
                                          (format(lines, ","), lines, big_rss, big_parser)):
        extra = f"  flat ({big_rss / small_rss:.2f}x for 4x the lines)" if count == lines else ""
        print(f"{'peak RSS ingest, ' + label + ' lines (MiB)':44} {'':>14} {rss / 1024:>14.1f}{extra}")
        if big_parser:
            print(f"{'  and its parser process (MiB)':44} {'':>14} {parser_rss / 1024:>14.1f}")
    print()
    print(f"gpuhub stored {result.new:,} GPU runs ({result.provisional:,} running); second pass: "
          f"{result2.unchanged:,} unchanged, {result2.new + result2.updated} written; report rows: {nrows}")
    if not args.keep and not args.workdir:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
