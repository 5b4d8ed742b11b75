"""The shipped monitoring files: rules and config pass promtool, every metric is documented,
the dashboard only uses metrics that exist, the systemd unit's command line parses.

That every dashboard and rule expression returns series on a real Prometheus scraping the
real testbed is checked in test_exporter_prometheus.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpuhub.cli.exporter import exporter
from gpuhub.exporter.families import FAMILIES

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "examples" / "monitoring"
DOC = REPO / "docs" / "monitoring.md"
METRIC = re.compile(r"\bgpuhub_[a-z0-9_]+")


def dashboard_exprs() -> list[str]:
    data = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    data = yaml.safe_load((MONITORING / "gpuhub-alerts.yml").read_text())
    return [rule["expr"] for group in data["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("GPUHUB_TESTBED") != "require":
        pytest.skip("promtool not installed: run scripts/testbed/prometheus.sh install")
    subprocess.run(["bash", str(REPO / "scripts" / "testbed" / "prometheus.sh"), "install"], check=True)
    return "promtool"


def test_promtool_accepts_rules_and_config(promtool):
    rules = subprocess.run([promtool, "check", "rules", str(MONITORING / "gpuhub-alerts.yml")], capture_output=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True)
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_metric_is_documented():
    doc = DOC.read_text()
    documented = set(METRIC.findall(doc))
    missing = [f.name for f in FAMILIES if f.name not in documented]
    assert not missing, f"not in docs/monitoring.md: {missing}"
    unknown = documented - {f.name for f in FAMILIES}
    assert not unknown, f"docs/monitoring.md names metrics that do not exist: {unknown}"
    for family in FAMILIES:  # the table row gives the labels
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{family.name}`"))
        for label in family.labels:
            assert f"`{label}`" in row, (family.name, label)


def test_dashboard_and_rules_use_existing_metrics_only():
    known = {f.name for f in FAMILIES}
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) >= 15
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used <= known, used - known
    # the four things the dashboard is for
    joined = "\n".join(dashboard_exprs())
    for needle in (
        "gpuhub_gpus_allocated",
        "gpuhub_gpus_idle",
        'state="pending"',
        "gpuhub_gpu_seconds_total",
        "gpuhub_site_up",
    ):
        assert needle in joined


def test_dashboard_is_importable_json():
    data = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert data["uid"] and data["title"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "site"} <= variables
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'site=~"$site"' in target["expr"]


def test_systemd_unit_command_line_parses():
    unit = (MONITORING / "gpuhub-exporter.service").read_text()
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[1] == "exporter"
    ctx = exporter.make_context("exporter", argv[2:])
    assert ctx.params["port"] == 9845 and ctx.params["address"] == "0.0.0.0"
