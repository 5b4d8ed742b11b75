"""Reports: normalisation, the five formats, and the `gpuhub usage` command line."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhub.accounting.formats import render
from gpuhub.accounting.records import UsageRow
from gpuhub.accounting.report import SiteFactors, build_report, chart_reports
from gpuhub.accounting.store import Filters, open_store
from gpuhub.cli import main

SITES = Path(__file__).parent / "data" / "sites"


def _run(job: str, start: str, end: str, hours: int, gpus: int, account: str, user: str, model: str) -> UsageRow:
    return UsageRow("c", job, None, start, start, end, hours * 3600, 1, 1, user, account, "gpu", "q", "COMPLETED",
                    f"gres/gpu={gpus}", gpus, model)


RUNS = [
    _run("1", "2026-01-10T00:00:00", "2026-01-10T10:00:00", 10, 4, "abc@a100", "ana", "a100"),
    _run("2", "2026-01-31T20:00:00", "2026-02-01T04:00:00", 8, 1, "abc@v100", "ana", "v100"),
    _run("3", "2026-02-03T00:00:00", "2026-02-03T05:00:00", 5, 2, "physics", "bo|b", "v100"),
    _run("4", "2026-02-04T00:00:00", "2026-02-04T01:00:00", 1, 1, "physics", "<cy>", "h100"),
]


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "usage.sqlite"
    with open_store(str(path)) as store:
        store.ingest("testbed", RUNS)
    monkeypatch.setenv("GPUHUB_USAGE_DB", str(path))
    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    return path


def test_normalization_uses_site_factors_and_warns_once(db):
    factors = SiteFactors()  # testbed.yaml: {v100: 1.0, a100: 2.0}
    with open_store(str(db)) as store:
        plain = build_report(store, ["project"])
        norm = build_report(store, ["project"], factors=factors)
    assert {r["project"]: r["gpu_hours"] for r in plain.rows} == {"abc": 48.0, "physics": 11.0}
    # abc: 40 A100 hours x 2 + 8 V100 hours; physics: 10 V100 hours + 1 H100 hour (unknown: factor 1)
    assert {r["project"]: r["normalized_gpu_hours"] for r in norm.rows} == {"abc": 88.0, "physics": 11.0}
    assert norm.warnings == ["site testbed: no normalization factor for GPU model h100; factor 1 used"]
    unknown_site = SiteFactors(load=lambda site: None)
    assert unknown_site("gone", "a100") == 1.0 and "no site file" in unknown_site.warnings[0]


def test_month_split_in_report(db):
    with open_store(str(db)) as store:
        report = build_report(store, ["month"])
    assert {r["month"]: r["gpu_hours"] for r in report.rows} == {"2026-01": 44.0, "2026-02": 15.0}
    assert {r["month"]: r["jobs"] for r in report.rows} == {"2026-01": 1, "2026-02": 3}


def _report(db, fmt, by=("user", "project")):
    with open_store(str(db)) as store:
        result = build_report(store, list(by))
        charts = chart_reports(store, Filters(), None, None, None) if fmt == "html" else None
    return render(result, fmt, charts)


def test_csv_parses(db):
    rows = list(csv.DictReader(io.StringIO(_report(db, "csv"))))
    assert rows[0].keys() == {"user", "project", "gpu_hours", "jobs", "provisional_gpu_hours"}
    assert {(r["user"], r["project"]): float(r["gpu_hours"]) for r in rows} == {
        ("ana", "abc"): 48.0, ("bo|b", "physics"): 10.0, ("<cy>", "physics"): 1.0}


def test_json_parses(db):
    data = json.loads(_report(db, "json"))
    assert data["by"] == ["user", "project"] and data["total"]["gpu_hours"] == 59.0 and data["total"]["jobs"] == 4
    assert "pro rata" in data["attribution"]


def test_markdown_table(db):
    text = _report(db, "markdown")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| user | project | gpu_hours | jobs |"
    assert lines[1] == "| --- | --- | ---: | ---: |"
    assert "| bo\\|b | physics | 10.00 | 1 |" in lines  # a | in a value does not break the table
    assert lines[-1] == "| **total** |  | **59.00** | **4** |"


def test_html_is_self_contained(db):
    text = _report(db, "html", by=("project", "month"))
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 3
    assert "<rect" in text and "&lt;cy&gt;" in text and "<cy>" not in text  # values are escaped
    assert not re.search(r"(https?:)?//|src=|href=|@import|url\(", text)  # nothing to fetch


def test_table_has_total(db):
    text = _report(db, "table", by=("project",))
    assert text.splitlines()[0].split() == ["PROJECT", "GPU_HOURS", "JOBS"]
    assert text.splitlines()[-1].split() == ["TOTAL", "59.00", "4"]


def cli(*args: str):
    return CliRunner().invoke(main, ["usage", *args])


def test_cli_report_formats_and_file(db, tmp_path):
    out = cli("report", "--by", "project", "--since", "2026-02", "--until", "2026-02", "--format", "json")
    assert out.exit_code == 0, out.output
    assert {r["project"]: r["gpu_hours"] for r in json.loads(out.output)["rows"]} == {"physics": 11.0, "abc": 4.0}
    target = tmp_path / "r.html"
    out = cli("report", "--format", "html", "-o", str(target))
    assert out.exit_code == 0 and target.read_text().count("<svg") == 3
    out = cli("report", "--by", "project", "--normalized")
    assert out.exit_code == 0 and "88.00" in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--by", "project,colour"], "colour: choose from"),
        (["report", "--since", "yesterday"], "is not a date"),
        (["report", "--since", "2026-03", "--until", "2026-02"], "--since must be before --until"),
        (["report", "--db", "mysql://x/y"], "give postgresql://"),
        (["collect", "--site", "no-such-site"], "no-such-site"),
        (["collect", "--overlap", "soon"], "not understood"),
        (["report", "--site", "nosuch"], "'nosuch' has no usage records; collect it with"),
        (["report", "--project", "ABC"], "'ABC' has no usage records; did you mean 'abc'? known projects: abc"),
        (["report", "--user", "anna"], "did you mean 'ana'?"),
        (["report", "--account", "abc"], "known accounts: abc@a100, abc@v100, physics"),
    ],
)
def test_cli_bad_input_exits_2(db, args, message):
    out = cli(*args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output


def test_collect_needs_sites_the_first_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUHUB_USAGE_DB", str(tmp_path / "empty.sqlite"))
    out = cli("collect")
    assert out.exit_code == 2 and "--site NAME" in out.output


def test_accounting_source_ledger_is_honoured(db, tmp_path, monkeypatch):
    """A Slurm site whose accounting.source is `ledger` is collected from the ledger: no sacct, no SSH."""
    (tmp_path / "mine.yaml").write_text(
        "name: mine\nscheduler: slurm\nconnection: {host: login.invalid}\naccounting: {source: ledger}\n"
        "partitions:\n  gpu: {gpus_per_node: 4, gpu_model: a100}\n")
    monkeypatch.setenv("GPUHUB_SITES", str(tmp_path))
    ledger_job("mine", "slurm", "123", "cms", gpus=2, model="a100", hours=1)
    out = cli("collect", "--site", "mine", "--since", "2026-01")
    assert out.exit_code == 0, out.output
    out = cli("report", "--by", "project", "--format", "json", "--site", "mine")
    assert [(r["project"], r["gpu_hours"]) for r in json.loads(out.output)["rows"]] == [("cms", 2.0)]


def ledger_job(site: str, scheduler: str, scheduler_id: str, project: str, gpus: int, model: str, hours: int) -> None:
    """A finished job in the (isolated) ledger, started 2026-01-01 00:00 UTC."""
    from gpuhub.ledger import Ledger
    from gpuhub.states import JobStatus, State

    ledger = Ledger()
    rec = ledger.add(token=f"tok-{scheduler_id}", site=site, scheduler=scheduler, name="x",
                     request={"project": project}, plan={"gpus": gpus, "gpu_model": model}, script="")
    ledger.mark_submitted(rec.id, scheduler_id, None, None)
    start = 1767225600.0
    ledger.update_status([(rec.id, JobStatus(State.COMPLETED, start=start, end=start + 3600 * hours))])
    ledger.close()


def test_local_site_from_the_ledger(db, monkeypatch):
    ledger_job("local", "local", "tok", "lsst", gpus=3, model="rtx", hours=2)
    for _ in range(2):  # twice: still counted once
        out = cli("collect", "--site", "local", "--since", "2026-01")
        assert out.exit_code == 0, out.output
    out = cli("report", "--by", "site,project", "--format", "json", "--site", "local")
    assert json.loads(out.output)["rows"] == [
        {"site": "local", "project": "lsst", "gpu_hours": 6.0, "jobs": 1, "provisional_gpu_hours": 0.0}]


def test_misspelt_filter_is_not_a_zero_bill(db):
    """A typo used to print TOTAL 0.00 and exit 0; now the real command refuses it, naming the value."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gpuhub", "usage", "report", "--project", "Physics"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "TOTAL" not in out.stdout and "did you mean 'physics'" in out.stderr
    assert len(out.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in out.stderr
    good = subprocess.run([sys.executable, "-m", "gpuhub", "usage", "report", "--project", "physics"],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and "TOTAL" in good.stdout
