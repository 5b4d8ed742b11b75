"""Pure accounting rules: AllocTRES, sacct lines (recorded on the real testbed), months, dates."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub.accounting.collect import default_since
from gpuhub.accounting.ledger_usage import ledger_rows
from gpuhub.accounting.records import month_shares, project_of, window_shares
from gpuhub.accounting.sacct import FORMAT, ParseStats, parse_alloc_tres, parse_sacct, sacct_argv
from gpuhub.accounting.sacct_collect import model_resolver
from gpuhub.cli.usage import parse_when
from gpuhub.registry import load_site

DATA = Path(__file__).parent / "data" / "accounting"
SITES = Path(__file__).parent / "data" / "sites"


@pytest.mark.parametrize(
    ("tres", "gpus", "model"),
    [
        # typed and untyped both present (what the testbed and most sites record): never added
        ("billing=1,cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=1024M,node=1", 2, "a100"),
        ("gres/gpu=1,gres/gpu:a100=1,cpu=4", 1, "a100"),  # another key order
        # typed only (AccountingStorageTRES=gres/gpu:TYPE without gres/gpu): the typed counts are summed
        ("billing=16,cpu=16,gres/gpu:v100=4,mem=64G,node=1", 4, "v100"),
        ("cpu=2,gres/gpu:a100=1,gres/gpu:v100=2,node=1", 3, "a100+v100"),
        # MIG slices are types of their own
        ("billing=64,cpu=9,gres/cpu=9,gres/gpu:a100_3g.20gb=1,gres/gpu=1,mem=60G,node=1", 1, "a100_3g.20gb"),
        # untyped only: the model comes from the site partition later
        ("billing=40,cpu=40,gres/gpu=4,mem=160000M,node=1", 4, ""),
        # GPU memory/utilisation TRES are not GPU counts
        ("cpu=8,gres/gpu=2,gres/gpumem=81920M,gres/gpuutil=100,node=1", 2, ""),
        # no GPU at all, and a pending job's empty AllocTRES
        ("billing=1,cpu=1,mem=1024M,node=1", 0, ""),
        ("", 0, ""),
    ],
)
def test_alloc_tres(tres, gpus, model):
    alloc = parse_alloc_tres(tres)
    assert (alloc.gpus, alloc.model) == (gpus, model)
    assert all(item.startswith("gres/gpu") for item in alloc.tres.split(",") if item)


def test_recorded_testbed_output():
    """Real `sacct -X -D -P` output from the testbed: a requeued job, an array, a cancelled job (running
    and pending), a 2-node job, MIG and untyped GRES, a CPU-only job, a running and a pending job."""
    stats = ParseStats()
    rows = list(parse_sacct((DATA / "sacct_testbed.txt").read_text().splitlines(keepends=True), stats=stats))
    assert stats.lines == 16 and stats.malformed == 0
    assert stats.pending == 2  # 3340 cancelled while pending (Start=None), 3344 pending (Start=Unknown)
    assert stats.no_gpu == 1  # 3336, CPU only
    assert stats.running == 1 and stats.rows == len(rows) == 13
    by_id: dict[str, list] = {}
    for r in rows:
        by_id.setdefault(r.job_id, []).append(r)
    # -D: the requeued job's two runs, told apart by their Submit time, each counted
    first, second = by_id["3333"]
    assert (first.state, first.wall_seconds, first.gpus) == ("REQUEUED", 4, 2)
    assert (second.state, second.wall_seconds) == ("COMPLETED", 20)
    assert first.submit != second.submit
    # untyped --gres=gpu:3: the testbed records gres/gpu=3 and gres/gpu:a100=3 -> 3 GPUs, not 6
    assert (by_id["3334"][0].gpus, by_id["3334"][0].gpu_model) == (3, "a100")
    assert by_id["3335"][0].gpu_model == "a100_1g.10gb"
    # 2 nodes x 2 GPUs: AllocTRES holds the job's total
    two_nodes = by_id["3338"][0]
    assert (two_nodes.gpus, two_nodes.nnodes, two_nodes.account) == (4, 2, "lsst")
    assert by_id["3339"][0].state == "CANCELLED"  # "CANCELLED by 0"
    running = by_id["3343"][0]
    assert running.end is None and running.state == "RUNNING" and running.wall_seconds == 13
    # array tasks: JobIDRaw is unique per task, JobID is how people name it
    assert sorted(r.job_ref for i in ("3345", "3346", "3347", "3337") for r in by_id[i]) == [
        "3337_0", "3337_1", "3337_2", "3337_3"]
    assert by_id["3333"][0].job_ref is None and first.cluster == "gpuhub-test"


def test_malformed_lines_are_counted_not_raised():
    lines = (DATA / "sacct_testbed.txt").read_text().splitlines()
    lines.insert(1, "garbage without fields")
    lines.insert(2, "")
    lines = [line.replace("|2|billing", "|two|billing") if line.startswith("3334|") else line  # ElapsedRaw
             for line in lines]
    lines = [line.replace("T23:37:28|2026-11-21T23:37:29", "T23:37:28|Today 23:37") if line.startswith("3342|")
             else line for line in lines]  # a relative time format (a login shell's SLURM_TIME_FORMAT)
    stats = ParseStats()
    rows = list(parse_sacct(lines, stats=stats))
    assert stats.malformed == 3 and stats.first_bad == "garbage without fields"
    assert len(rows) == 11


def test_parse_streams_in_batches():
    lines = (DATA / "sacct_testbed.txt").read_text().splitlines() * 3
    assert sum(1 for _ in parse_sacct(iter(lines))) == 39


def test_models_from_the_site(monkeypatch):
    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    resolve = model_resolver(load_site("testbed"))
    assert resolve("a100", "gpu") == "a100"  # GRES type of a partition profile
    assert resolve("a100_1g.10gb", "gpu") == "a100_1g.10gb"  # unknown type: kept as is
    assert resolve("", "short") == "a100"  # untyped: the partition's only model
    assert resolve("", "gpu") == ""  # two models share partition gpu: unknown
    line = "9|9|u|physics|short|normal|COMPLETED|2026-01-01T00:00:00|2026-01-01T00:00:00|2026-01-01T01:00:00|3600|" \
           "cpu=1,gres/gpu=2,node=1|1|1|c\n"
    assert next(parse_sacct([line], resolve)).gpu_model == "a100"


def test_sacct_command():
    argv = sacct_argv("2026-01-01T00:00:00", "2026-01-02T00:00:00", all_users=True)
    assert argv[:3] == ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard"]
    for flag in ("-X", "-D", "-P", "--noheader", "--noconvert", "--allusers", f"--format={FORMAT}"):
        assert flag in argv
    assert argv[argv.index("-S") + 1] == "2026-01-01T00:00:00" and argv[argv.index("-E") + 1] == "2026-01-02T00:00:00"
    assert "--allusers" not in sacct_argv("a", "b", all_users=False)


@pytest.mark.parametrize(
    ("account", "project"),
    [("abc@a100", "abc"), ("abc@v100", "abc"), ("physics", "physics"), ("", ""), (" lab @x", "lab")],
)
def test_project_rule(account, project):
    assert project_of(account) == project


def test_month_split_is_exact():
    # 2 h from 23:00 on Jan 31 with 4 GPUs: half in each month
    assert month_shares("2026-01-31T23:00:00", "2026-02-01T01:00:00", 4 * 7200) == [
        ("2026-01", 14400), ("2026-02", 14400)]
    # over three months, the shares add up exactly (largest remainder)
    shares = month_shares("2026-01-31T23:00:00", "2026-03-01T01:00:00", 1001)
    assert [m for m, _ in shares] == ["2026-01", "2026-02", "2026-03"] and sum(s for _, s in shares) == 1001
    assert month_shares("2026-12-31T12:00:00", "2027-01-01T12:00:00", 10) == [("2026-12", 5), ("2027-01", 5)]
    assert month_shares("2026-05-03T00:00:00", "2026-05-03T00:00:00", 0) == [("2026-05", 0)]


def test_window_clip():
    assert window_shares("2026-01-31T23:00:00", "2026-02-01T01:00:00", 7200, "2026-02-01T00:00:00",
                         "2026-02-01T00:30:00") == [("2026-02", 1800.0)]
    assert window_shares("2026-01-01T00:00:00", "2026-01-01T01:00:00", 3600, "2026-02-01T00:00:00",
                         "2026-03-01T00:00:00") == []


def test_dates_people_type():
    assert parse_when("2026-03") == "2026-03-01T00:00:00"
    assert parse_when("2026-03", end=True) == "2026-04-01T00:00:00"
    assert parse_when("2026-12", end=True) == "2027-01-01T00:00:00"
    assert parse_when("2026-03-31", end=True) == "2026-04-01T00:00:00"
    assert parse_when("2026-03-31T12:30") == "2026-03-31T12:30:00"
    for bad in ("March", "2026-13", "2026-02-30", "2026-01-01T25:00"):
        with pytest.raises(ValueError):
            parse_when(bad)
    assert default_since("2026-01-15T10:00:00") == "2025-12-01T00:00:00"


def test_ledger_jobs_become_rows(monkeypatch):
    from gpuhub.ledger import Ledger
    from gpuhub.states import JobStatus, State

    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    ledger = Ledger()
    site = load_site("local")
    done = ledger.add(token="t1", site="local", scheduler="local", name="a", request={"project": "astro"},
                      plan={"gpus": 2, "gpu_model": "rtx", "nodes": 1}, script="")
    ledger.mark_submitted(done.id, "t1", None, None)
    ledger.update_status([(done.id, JobStatus(State.COMPLETED, start=1767225600.0, end=1767229200.5))])
    cpu = ledger.add(token="t2", site="local", scheduler="local", name="b", request={}, plan={"gpus": 0}, script="")
    ledger.mark_submitted(cpu.id, "t2", None, None)
    ledger.update_status([(cpu.id, JobStatus(State.COMPLETED, start=1767225600.0, end=1767229200.0))])
    rows = list(ledger_rows(site, ledger.jobs(site="local"), since_epoch=0, now_epoch=1767300000))
    ledger.close()
    assert len(rows) == 1  # the CPU-only job carries no GPU hours
    row = rows[0]
    assert (row.job_id, row.start, row.end, row.wall_seconds, row.gpus, row.gpu_model, row.account) == (
        "t1", "2026-01-01T00:00:00", "2026-01-01T01:00:00", 3600, 2.0, "rtx", "astro")
