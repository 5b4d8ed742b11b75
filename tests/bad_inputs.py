"""A corpus of bad input, each case run through the real command line (``python -m gpuhub``).

Every case must end the way a trusted tool ends on bad input: a non-zero exit (2 for usage and
configuration errors), exactly one line on stderr naming the option, file or field and what is
allowed, no traceback, within a time limit, and a ledger that is still consistent (the rows it
held are all still there, nothing left half-written).

Run it on its own to count cases, e.g. against another checkout:

    python tests/bad_inputs.py                 # this checkout
    python tests/bad_inputs.py --src /path/to/other/src -v

tests/test_bad_inputs.py runs each case as a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "bad_inputs"
TIMEOUT = 30.0
MEMORY_LIMIT = 2 << 30  # a case may not use more than 2 GiB (an alias bomb would take the machine)

# --- ledgers the cases start from ------------------------------------------------------------

LEDGER_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY, token TEXT NOT NULL UNIQUE, site TEXT NOT NULL, scheduler TEXT NOT NULL,
    scheduler_id TEXT, name TEXT NOT NULL, request TEXT NOT NULL, plan TEXT NOT NULL, script TEXT NOT NULL,
    log_out TEXT, log_err TEXT, state TEXT NOT NULL, reason TEXT, nodes TEXT, exit_code TEXT,
    created_at REAL NOT NULL, submitted_at REAL, started_at REAL, ended_at REAL, updated_at REAL NOT NULL,
    UNIQUE (site, scheduler_id));
CREATE INDEX jobs_site_state ON jobs (site, state);
CREATE TABLE state_history (job_id INTEGER NOT NULL REFERENCES jobs(id), state TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (job_id, state));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""
HEALTHY_ROWS = 40


def healthy_ledger(path: Path, *, name: str = "train", state: str = "completed", request: str = "{}") -> None:
    """A ledger as gpuhub writes it, with finished jobs of the local site (nothing to poll)."""
    db = sqlite3.connect(path)
    db.executescript(LEDGER_SCHEMA)
    now = time.time()
    for i in range(1, HEALTHY_ROWS + 1):
        db.execute(
            "INSERT INTO jobs (id, token, site, scheduler, scheduler_id, name, request, plan, script, state, "
            "created_at, submitted_at, updated_at) VALUES (?, ?, 'local', 'local', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (i, f"tok{i:04d}", f"tok{i:04d}", name if i == HEALTHY_ROWS else f"job{i}",
             request if i == HEALTHY_ROWS else "{}", '{"gpus": 0}', "#!/bin/bash\ntrue\n" + "# pad\n" * 50,
             state if i == HEALTHY_ROWS else "completed", now, now, now),
        )
        db.execute("INSERT INTO state_history VALUES (?, 'completed', ?)", (i, now))
    db.commit()
    db.close()


# Schema 2 (failover between sites): job 39 is the second attempt of job 38, whose failover is done.
LEDGER_SCHEMA_2 = """
ALTER TABLE jobs ADD COLUMN attempt_of INTEGER REFERENCES jobs(id);
ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
CREATE INDEX jobs_attempt_of ON jobs (attempt_of);
CREATE TABLE failovers (job_id INTEGER PRIMARY KEY REFERENCES jobs(id), targets TEXT NOT NULL, after REAL NOT NULL,
    moving INTEGER, done TEXT, updated_at REAL NOT NULL);
UPDATE meta SET value = '2' WHERE key = 'schema_version';
UPDATE jobs SET attempt_of = 38, attempt = 2 WHERE id = 39;
INSERT INTO failovers VALUES (38, '[{"site": "local"}, {"site": "local"}]', 60, NULL, 'attempt 2 ran', 0);
"""


def _sql(statement: str, base: Callable[[Path], None] = healthy_ledger) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        base(path)
        db = sqlite3.connect(path)
        db.executescript(statement)
        db.commit()
        db.close()

    return build


healthy_ledger_2 = _sql(LEDGER_SCHEMA_2)  # as gpuhub writes it since failover: attempts and a failover


def _truncated(path: Path) -> None:
    healthy_ledger(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20)


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE jobs (x TEXT, y INTEGER); INSERT INTO jobs VALUES ('a', 1);")
    db.commit()
    db.close()


def _corrupt_page(path: Path) -> None:
    healthy_ledger(path)
    with open(path, "r+b") as handle:
        handle.seek(4096)  # the header of the jobs table's root page (page 2)
        handle.write(b"\xff" * 16)


LEDGERS: dict[str, Callable[[Path], None]] = {
    "healthy": healthy_ledger,
    "escape-name": lambda p: healthy_ledger(p, name="\x1b]0;pwned\x07\x1b[2J\x1b[31mred"),
    "garbage": _garbage,
    "truncated": _truncated,
    "corrupt-page": _corrupt_page,
    "empty-file": lambda p: p.write_bytes(b""),
    "unknown-state": lambda p: healthy_ledger(p, state="exploded"),
    "bad-json": lambda p: healthy_ledger(p, request="{not json"),
    "foreign-schema": _foreign,
    "schema-99": _sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'"),
    "schema-text": _sql("UPDATE meta SET value = 'one' WHERE key = 'schema_version'"),
    "no-meta": _sql("DROP TABLE meta"),
    "null-plan": _sql(f"UPDATE jobs SET plan = 'null' WHERE id = {HEALTHY_ROWS}"),
    "healthy-2": healthy_ledger_2,
    "v2-dangling-attempt": _sql("UPDATE jobs SET attempt_of = 999 WHERE id = 39", healthy_ledger_2),
    "v2-bad-failover": _sql("UPDATE failovers SET targets = '{oops' WHERE job_id = 38", healthy_ledger_2),
    "v2-orphan-failover": _sql("INSERT INTO failovers VALUES (500, '[]', 60, NULL, NULL, 0)", healthy_ledger_2),
    "v2-no-failovers": _sql("DROP TABLE failovers", healthy_ledger_2),
    "v2-no-meta": _sql("DROP TABLE meta", healthy_ledger_2),
}

# --- site files and templates ------------------------------------------------------------------


def _site(name: str, extra: str = "", scheduler: str = "local", partitions: str | None = None) -> str:
    parts = partitions or "partitions:\n  default:\n    gpus_per_node: 0\n"
    connection = "" if scheduler == "local" else "connection: {host: h.example.org}\n"
    return f"name: {name}\nscheduler: {scheduler}\n{connection}{parts}{extra}"


def _alias_bomb() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    # Anchors must live somewhere a site file allows: under `sources` (a list of strings).
    body = "sources:\n" + "".join(f"  - {line.split(': ', 1)[1]}\n" for line in lines)
    return _site("bomb", body + "description: *a9\n")


SITE_WITH_TEMPLATE = _site("tpl", "template: evil.j2\n")


def template_case(source: str | bytes, name: str = "evil.j2") -> dict[str, str | bytes]:
    return {"config/sites/tpl.yaml": SITE_WITH_TEMPLATE, f"config/sites/{name}": source}


# --- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    item: int  # the hardening item it belongs to
    argv: tuple[str, ...]
    expect: tuple[str, ...] = ()  # every one of these appears in the error line
    exit: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative to the case's home
    ledger: str | None = "healthy"
    stdout: tuple[str, ...] = ()  # and these in stdout (the good part of a partly bad listing)
    absent: tuple[str, ...] = ()  # files that must not exist afterwards (relative to the home)
    read_only: bool = False  # the ledger's directory is mounted read-only
    ledger_changes: bool = False  # the command may legitimately rewrite the ledger file
    env: dict[str, str] = field(default_factory=dict)  # extra environment ({home} is replaced)


R = ("render", "--")  # shorthand: render of a trivial command
CMD = ("--", "true")
NINES = "9" * 400
BIG = "1" + "0" * 30
LONG_SITE = "s" * 5000

CASES: list[Case] = [
    # 1. templates are untrusted: no code runs, nothing hangs
    Case("tpl-lipsum-globals", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ lipsum.__globals__['os'].popen('touch PWNED').read() }}\n"), absent=("PWNED",)),
    Case("tpl-cycler-open", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ cycler.__init__.__globals__['__builtins__']['open']('/etc/passwd').read() }}\n")),
    Case("tpl-class-mro", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")),
    Case("tpl-self-attr-globals", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ self._TemplateReference__context.environment.globals }}\n"
                             "{{ site.__class__.__init__.__globals__ }}\n")),
    Case("tpl-format-attr", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ '{0.__class__.__init__.__globals__}'.format(site) }}\n")),
    Case("tpl-mutate-site", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ site.directives.append('--x') }}{{ env.update({'A': 'B'}) }}\n")),
    Case("tpl-range-huge", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% for i in range(10**12) %}x{% endfor %}\n")),
    Case("tpl-nested-loops", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}\n")),
    Case("tpl-self-include", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case('{% include "evil.j2" %}\n')),
    Case("tpl-self-extends", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case('{% extends "evil.j2" %}\n')),
    Case("tpl-deep-recursion", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}\n")),
    Case("tpl-exponential-macro", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
                             "{{ f(50) }}\n")),
    Case("tpl-string-times", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ 'x' * 10**10 }}\n")),
    Case("tpl-power", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ 10 ** (10 ** 10) }}\n")),
    Case("tpl-center", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ 'x' | center(10**10) }}\n")),
    Case("tpl-format-width", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ '%0999999999d' | format(1) }}{{ '{:>9999999999}'.format(1) }}\n")),
    Case("tpl-namespace-doubling", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% set ns = namespace(s='xx') %}{% for i in range(64) %}"
                             "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}\n")),
    Case("tpl-not-utf8", 1, ("render", "--site", "tpl", *CMD), ("evil.j2", "UTF-8"),
         files=template_case(b"#!/bin/bash\n# caf\xe9 \xff\xfe\n")),
    Case("tpl-syntax", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% for %}\n")),
    Case("tpl-missing", 1, ("render", "--site", "tpl", *CMD), ("nothere.j2",),
         files={"config/sites/tpl.yaml": _site("tpl", "template: nothere.j2\n")}),
    Case("tpl-path-escape", 1, ("render", "--site", "tpl", *CMD), ("template",),
         files={"config/sites/tpl.yaml": _site("tpl", "template: ../../../../etc/passwd\n")}),
    Case("tpl-include-escape", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case('{% include "../../../../../../etc/passwd" %}\n')),
    Case("tpl-write-dict", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{{ site.partitions }}\n")),
    Case("tpl-huge-output", 1, ("render", "--site", "tpl", *CMD), ("evil.j2",),
         files=template_case("{% for i in range(99999) %}{{ 'x' * 99999 }}{% endfor %}\n")),
    # 3. YAML alias bombs and unbounded values in messages
    Case("yaml-alias-bomb", 3, ("render", "--site", "bomb", *CMD), ("bomb.yaml", "alias"),
         files={"config/sites/bomb.yaml": _alias_bomb()}),
    Case("yaml-alias-bomb-validate", 3, ("sites", "validate", "{home}/config/sites/bomb.yaml"), ("bomb.yaml",),
         files={"config/sites/bomb.yaml": _alias_bomb()}),
    Case("yaml-long-value-cut", 3, ("render", "--site", "lv", *CMD), ("lv.yaml", "scheduler"),
         files={"config/sites/lv.yaml": _site("lv").replace("scheduler: local", "scheduler: " + "x" * 100000)}),
    Case("yaml-long-key", 3, ("render", "--site", "lk", *CMD), ("lk.yaml",),
         files={"config/sites/lk.yaml": _site("lk", "k" * 100000 + ": 1\n")}),
    Case("yaml-long-token", 3, ("render", "--site", "lt", *CMD), ("lt.yaml", "qos"),
         files={"config/sites/lt.yaml": _site("lt", "defaults: {qos: '" + "a b" * 30000 + "'}\n")}),
    # 4. one bad site file must not break the others
    Case("yaml-huge-int", 4, ("render", "--site", "hi", *CMD), ("hi.yaml:",),
         files={"config/sites/hi.yaml": _site("hi", partitions="partitions:\n  d:\n    gpus_per_node: "
                                              + "9" * 5000 + "\n")}),
    Case("yaml-huge-int-list", 4, ("sites", "list"), ("hi.yaml",), stdout=("jean-zay", "local"),
         files={"config/sites/hi.yaml": _site("hi", partitions="partitions:\n  d:\n    gpus_per_node: "
                                              + "9" * 5000 + "\n")}),
    Case("yaml-deep-nesting", 4, ("render", "--site", "deep", *CMD), ("deep.yaml",),
         files={"config/sites/deep.yaml": _site("deep", "description: " + "[" * 900 + "]" * 900 + "\n")}),
    Case("yaml-deep-nesting-map", 4, ("render", "--site", "deepm", *CMD), ("deepm.yaml",),
         files={"config/sites/deepm.yaml": _site("deepm", "env: " + "{a: " * 900 + "1" + "}" * 900 + "\n")}),
    Case("yaml-very-deep-list", 4, ("sites", "list"), ("vdeep.yaml",), stdout=("jean-zay",),
         files={"config/sites/vdeep.yaml": "description: " + "[" * 100000 + "]" * 100000 + "\n"}),
    Case("yaml-deep-nesting-list", 4, ("sites", "list"), ("deep.yaml",), stdout=("jean-zay", "local"),
         files={"config/sites/deep.yaml": _site("deep", "description: " + "[" * 900 + "]" * 900 + "\n")}),
    Case("yaml-huge-float", 4, ("render", "--site", "hf", *CMD), ("hf.yaml:6", "digits"),
         files={"config/sites/hf.yaml": _site("hf", partitions="partitions:\n  d:\n    gpus_per_node: 1\n"
                                              "    gpu_memory_gb: 1" + "0" * 400 + ".0\n")}),
    Case("yaml-gpus-per-node-huge", 4, ("render", "--site", "gp", *CMD), ("gp.yaml", "gpus_per_node"),
         files={"config/sites/gp.yaml": _site("gp", partitions="partitions:\n  d:\n    gpus_per_node: "
                                              "99999999999\n")}),
    Case("yaml-walltime-huge", 4, ("render", "--site", "wt", *CMD), ("wt.yaml", "max_walltime"),
         files={"config/sites/wt.yaml": _site("wt", partitions="partitions:\n  d:\n    gpus_per_node: 0\n"
                                              "    max_walltime: 99999999999999h\n")}),
    Case("yaml-memory-huge", 4, ("render", "--site", "mm", *CMD), ("mm.yaml:6", "digits"),
         files={"config/sites/mm.yaml": _site("mm", partitions="partitions:\n  d:\n    gpus_per_node: 0\n"
                                              "    memory_per_node: " + "9" * 400 + "\n")}),
    Case("yaml-port-float", 4, ("render", "--site", "pf", *CMD), ("pf.yaml", "connect_timeout"),
         files={"config/sites/pf.yaml": _site("pf", scheduler="ssh").replace(
             "connection: {host: h.example.org}", "connection: {host: h.example.org, connect_timeout: .inf}")}),
    Case("yaml-persist-huge", 4, ("render", "--site", "kp", *CMD), ("kp.yaml", "persist", "86400"),
         files={"config/sites/kp.yaml": _site("kp", scheduler="ssh").replace(
             "connection: {host: h.example.org}", "connection: {host: h.example.org, persist: 999999}")}),
    Case("yaml-persist-negative", 4, ("render", "--site", "kn", *CMD), ("kn.yaml", "persist"),
         files={"config/sites/kn.yaml": _site("kn", scheduler="ssh").replace(
             "connection: {host: h.example.org}", "connection: {host: h.example.org, persist: -1}")}),
    Case("yaml-recursive-alias", 4, ("render", "--site", "ra", *CMD), ("ra.yaml",),
         files={"config/sites/ra.yaml": _site("ra", "sources: &s [*s]\n")}),
    Case("yaml-mem-walltime-sites", 4, ("render", "--site", "mw", *CMD), ("mw.yaml", "memory_per_node"),
         files={"config/sites/mw.yaml": _site("mw", partitions="partitions:\n  d:\n    gpus_per_node: 0\n"
                                              "    memory_per_node: 99999999T\n")}),
    Case("yaml-python-tag", 4, ("render", "--site", "pt", *CMD), ("pt.yaml",),
         files={"config/sites/pt.yaml": _site("pt", "description: !!python/object/apply:os.system ['touch PWNED']\n")},
         absent=("PWNED",)),
    Case("yaml-not-utf8", 4, ("render", "--site", "nu", *CMD), ("nu.yaml", "UTF-8"),
         files={"config/sites/nu.yaml": b"name: nu\ndescription: caf\xe9\n"}),
    Case("yaml-list-top", 4, ("render", "--site", "lt2", *CMD), ("lt2.yaml",),
         files={"config/sites/lt2.yaml": "- a\n- b\n"}),
    Case("yaml-date-value", 4, ("render", "--site", "dv", *CMD), ("dv.yaml", "description"),
         files={"config/sites/dv.yaml": _site("dv", "description: 2024-01-01\n")}),
    Case("yaml-many-errors", 4, ("render", "--site", "me", *CMD), ("me.yaml",),
         files={"config/sites/me.yaml": _site("me", "".join(f"bad{i}: 1\n" for i in range(3000)))}),
    # 5. damaged ledgers
    Case("ledger-garbage", 5, ("jobs",), ("ledger.sqlite", "gpuhub ledger"), ledger="garbage"),
    Case("ledger-garbage-status", 5, ("status",), ("ledger.sqlite", "gpuhub ledger"), ledger="garbage"),
    Case("ledger-garbage-submit", 5, ("submit", *CMD), ("ledger.sqlite", "gpuhub ledger"), ledger="garbage"),
    Case("ledger-truncated", 5, ("jobs",), ("ledger.sqlite", "gpuhub ledger"), ledger="truncated"),
    Case("ledger-corrupt-page", 5, ("jobs", "-n", "0"), ("ledger.sqlite", "gpuhub ledger"), ledger="corrupt-page"),
    Case("ledger-unknown-state", 5, ("jobs",), ("ledger.sqlite", "exploded", "gpuhub ledger"),
         ledger="unknown-state"),
    Case("ledger-unknown-state-status", 5, ("status", "last"), ("ledger.sqlite", "gpuhub ledger"),
         ledger="unknown-state"),
    Case("ledger-bad-json", 5, ("jobs",), ("ledger.sqlite", "gpuhub ledger"), ledger="bad-json"),
    Case("ledger-null-plan", 5, ("jobs",), ("ledger.sqlite", "gpuhub ledger"), ledger="null-plan"),
    Case("ledger-foreign-schema", 5, ("jobs",), ("ledger.sqlite", "gpuhub ledger"), ledger="foreign-schema"),
    Case("ledger-schema-99", 5, ("jobs",), ("ledger.sqlite", "newer"), ledger="schema-99"),
    Case("ledger-schema-text", 5, ("jobs",), ("ledger.sqlite", "schema"), ledger="schema-text"),
    Case("ledger-check-garbage", 5, ("ledger", "check"), ("ledger.sqlite", "repair"), ledger="garbage"),
    Case("ledger-check-unknown-state", 5, ("ledger", "check"), ("ledger.sqlite", "repair"), ledger="unknown-state"),
    Case("ledger-dir-is-file", 5, ("submit", *CMD), ("ledger",), ledger=None, files={"data": "not a directory"}),
    Case("ledger-is-dir", 5, ("jobs",), ("ledgerdir",), ledger=None, files={"ledgerdir/x": "x"},
         env={"GPUHUB_LEDGER": "{home}/ledgerdir"}),
    Case("ledger-readonly-submit", 5, ("submit", *CMD), ("ledger.sqlite", "read-only"), read_only=True),
    Case("ledger-readonly-cancel", 5, ("cancel", "1"), ("ledger.sqlite", "read-only"), read_only=True),
    Case("ledger-v2-readonly-submit", 5, ("submit", *CMD), ("ledger.sqlite", "read-only"), ledger="healthy-2",
         read_only=True),
    Case("ledger-v2-no-failovers", 5, ("jobs",), ("ledger.sqlite", "gpuhub ledger"), ledger="v2-no-failovers"),
    Case("ledger-v2-bad-failover", 5, ("failover", "38"), ("ledger.sqlite", "gpuhub ledger"),
         ledger="v2-bad-failover"),
    Case("ledger-v2-bad-failover-status", 5, ("status", "39"), ("ledger.sqlite", "gpuhub ledger"),
         ledger="v2-bad-failover"),
    Case("ledger-v2-check-dangling", 5, ("ledger", "check"), ("ledger.sqlite", "repair"),
         ledger="v2-dangling-attempt"),
    Case("ledger-v2-check-orphan-failover", 5, ("ledger", "check"), ("ledger.sqlite", "repair"),
         ledger="v2-orphan-failover"),
    # 6. numbers and other values typed on the command line
    Case("mem-400-nines", 6, ("render", "--mem", NINES, *CMD), ("--mem",)),
    Case("mem-nan", 6, ("render", "--mem", "nanG", *CMD), ("--mem",)),
    Case("mem-huge-t", 6, ("render", "--mem", "99999999T", *CMD), ("--mem",)),
    Case("gpus-huge", 6, ("render", "--gpus", BIG, *CMD), ("--gpus",)),
    Case("gpus-over-bound", 6, ("render", "--gpus", "1000000", *CMD), ("--gpus",)),
    Case("nodes-huge", 6, ("render", "--nodes", BIG, *CMD), ("--nodes",)),
    Case("gpn-huge", 6, ("render", "--gpus-per-node", BIG, *CMD), ("--gpus-per-node",)),
    Case("cpus-huge", 6, ("render", "--cpus-per-gpu", BIG, *CMD), ("--cpus-per-gpu",)),
    Case("time-huge", 6, ("render", "--time", "99999999999999h", *CMD), ("--time",)),
    Case("time-huge-days", 6, ("render", "--time", NINES + "-00:00:00", *CMD), ("--time",)),
    Case("time-zero", 6, ("render", "--time", "0", *CMD), ("--time",)),
    Case("logs-30-digit", 6, ("logs", "1" * 30), ("job",)),
    Case("status-30-digit", 6, ("status", "1" * 30), ("job",)),
    Case("cancel-30-digit", 6, ("cancel", "1" * 30), ("job",)),
    Case("after-30-digit", 6, ("render", "--after", "1" * 30, *CMD), ("--after",)),
    Case("status-superscript", 6, ("status", "²"), ("job",)),
    Case("logs-arabic-digits", 6, ("logs", "٣"), ("job",)),
    Case("cancel-zero", 6, ("cancel", "0"), ("job",)),
    Case("cancel-unknown", 6, ("cancel", "12345"), ("job", "12345"), exit=1),
    Case("status-bad-ref", 6, ("status", "jean-zay:"), ("job",)),
    Case("htc-array-step0", 6, ("render", "--site", "htcondor-example", "--array", "0-10:0", *CMD), ("--array",)),
    Case("htc-array-1-step0", 6, ("render", "--site", "htcondor-example", "--array", "1:0", *CMD), ("--array",)),
    Case("htc-array-huge", 6, ("render", "--site", "htcondor-example", "--array", "0-99999999999", *CMD),
         ("--array",)),
    Case("slurm-array-huge", 6, ("render", "--site", "ruche", "--array", "0-" + "9" * 40, *CMD), ("--array",)),
    Case("array-throttle-zero", 6, ("render", "--site", "ruche", "--array", "0-9%0", *CMD), ("--array",)),
    Case("jobs-limit-31-digits", 6, ("jobs", "--limit", "1" * 31), ("--limit",)),
    Case("jobs-limit-negative", 6, ("jobs", "--limit", "-1"), ("--limit",)),
    Case("status-interval-negative", 6, ("status", "--watch", "--interval", "-1"), ("--interval",)),
    Case("status-interval-nan", 6, ("status", "--watch", "--interval", "nan"), ("--interval",)),
    Case("status-interval-inf", 6, ("status", "--watch", "--interval", "inf"), ("--interval",)),
    Case("site-5000-chars", 6, ("render", "--site", LONG_SITE, *CMD), ("site",)),
    Case("site-path", 6, ("render", "--site", "../../etc/passwd", *CMD), ("site",)),
    Case("site-nul", 6, ("sites", "show", "a\x01b"), ("site",)),
    Case("sites-show-long", 6, ("sites", "show", LONG_SITE), ("site",)),
    Case("render-o-proc", 6, ("render", "-o", "/proc/x", *CMD), ("--output-dir",)),
    Case("render-o-file", 6, ("render", "-o", "{home}/afile", *CMD), ("--output-dir",), files={"afile": "x"}),
    Case("plan-probe-timeout-nan", 6, ("plan", "--probe-timeout", "nan", *CMD), ("--probe-timeout",)),
    Case("plan-probe-timeout-huge", 6, ("plan", "--probe-timeout", BIG, *CMD), ("--probe-timeout",)),
    Case("submit-failover-after-huge", 6, ("submit", "--site", "auto", "--failover-after", NINES, *CMD),
         ("--failover-after",)),
    Case("submit-failover-no-auto", 6, ("submit", "--failover-after", "30m", *CMD), ("--failover-after",)),
    Case("plan-sites-unknown", 6, ("plan", "--sites", LONG_SITE, "--offline", *CMD), ("--sites", "unknown site")),
    Case("failover-id-huge", 6, ("failover", NINES), ("JOB",)),
    Case("gpus-probe-timeout-inf", 6, ("gpus", "--probe-timeout", "inf"), ("--probe-timeout",)),
    Case("broker-yaml-nan-allocation", 6, ("plan", "--offline", *CMD), ("broker.yaml", "allocations.x"),
         files={"config/broker.yaml": "allocations: {x: .nan}\n"}),
    Case("broker-yaml-not-mapping", 6, ("plan", "--offline", *CMD), ("broker.yaml",),
         files={"config/broker.yaml": "- a\n- b\n"}),
    Case("exporter-interval-nan", 6, ("exporter", "--sites", "local", "--interval", "nan"), ("--interval",)),
    Case("exporter-interval-inf", 6, ("exporter", "--sites", "local", "--interval", "inf"), ("--interval",)),
    Case("exporter-timeout-nan", 6, ("exporter", "--sites", "local", "--timeout", "nan"), ("--timeout",)),
    Case("usage-top-huge", 6, ("usage", "report", "--top", BIG), ("--top",)),
    Case("usage-chunk-huge", 6, ("usage", "collect", "--site", "local", "--chunk", "99999999999999h"),
         ("--chunk",)),
    Case("usage-since-huge-year", 6, ("usage", "report", "--since", "99999-01"), ("--since",)),
    Case("env-bad-name", 6, ("render", "-e", "1A=b", *CMD), ("--env",)),
    Case("name-control", 6, ("render", "--name", "\x1b[2J" * 100, "--gpus", "-1", *CMD), ("--gpus",)),
    Case("name-huge", 6, ("render", "--name", "n" * 100000, *CMD), ("--name",)),
    Case("script-dev-zero", 6, ("render", "--script", "/dev/zero"), ("--script",)),
    Case("script-huge", 6, ("render", "--script", "{home}/big.sh"), ("--script",), files={"big.sh": "#" * (5 << 20)}),
    Case("validate-dev-zero", 4, ("sites", "validate", "/dev/zero"), ("/dev/zero",)),
    Case("site-file-huge", 4, ("render", "--site", "big", *CMD), ("big.yaml",),
         files={"config/sites/big.yaml": _site("big", "description: '" + "x" * (2 << 20) + "'\n")}),
    Case("script-binary", 6, ("render", "--script", "{home}/bin.sh"), ("--script",),
         files={"bin.sh": b"\xff\xfe\x00binary"}),
    Case("env-ssh-persist-word", 6, ("sites", "list"), ("GPUHUB_SSH_PERSIST", "86400"),
         env={"GPUHUB_SSH_PERSIST": "forever"}),
    Case("env-ssh-persist-huge", 6, ("status",), ("GPUHUB_SSH_PERSIST", "86400"), env={"GPUHUB_SSH_PERSIST": NINES}),
    # 7. contradictory requests
    Case("gpus0-gpu-type", 7, ("render", "--site", "jean-zay", "-P", "abc", "--gpus", "0", "--gpu-type", "a100",
                               *CMD), ("--gpus", "--gpu-type")),
    Case("directive-on-local", 7, ("render", "--directive=--mail-type=END", *CMD), ("--directive",)),
    Case("account-on-local", 7, ("render", "--account", "abc", *CMD), ("--account",)),
    Case("qos-on-local", 7, ("render", "--qos", "normal", *CMD), ("--qos",)),
    Case("qos-on-ssh", 7, ("render", "--site", "lab-server-example", "--qos", "normal", *CMD), ("--qos",)),
    Case("account-on-lab", 7, ("render", "--site", "lab-server-example", "--account", "abc", *CMD), ("--account",)),
    Case("directive-on-lab", 7, ("submit", "--site", "lab-server-example", "--directive=--x", *CMD),
         ("--directive",)),
    Case("qos-on-oar", 7, ("render", "--site", "gricad-bigfoot", "--project", "p", "--gpus", "1", "--qos", "normal",
                           *CMD), ("--qos", "gricad-bigfoot")),
    Case("qos-on-htcondor", 7, ("render", "--site", "htcondor-example", "--qos", "normal", *CMD), ("--qos",)),
    Case("htc-array-reversed", 7, ("render", "--site", "htcondor-example", "--array", "5-1", *CMD), ("--array",)),
    Case("normalization-nan", 7, ("render", "--site", "nn", *CMD), ("nn.yaml", "normalization"),
         files={"config/sites/nn.yaml": _site("nn", "accounting: {normalization: {a100: .nan}}\n")}),
    Case("normalization-inf", 7, ("render", "--site", "ni", *CMD), ("ni.yaml", "normalization"),
         files={"config/sites/ni.yaml": _site("ni", "accounting: {normalization: {a100: .inf}}\n")}),
    Case("log-dir-escape", 7, ("render", "--site", "ld", *CMD), ("ld.yaml", "log_dir"),
         files={"config/sites/ld.yaml": _site("ld", "log_dir: ../../../../etc\n")}),
    # 8. staging
    Case("stage-symlink-outside", 8, ("submit", "--site", "lab-server-example", "--stage", "{home}/proj",
                                      "--dry-run", *CMD),
         ("leak", "--follow-symlinks"), files={"proj/a.py": "x", "outside/secret": "key"}),
    Case("stage-not-utf8-name", 8, ("submit", "--site", "lab-server-example", "--stage", "{home}/proj",
                                    "--dry-run", *CMD), ("not UTF-8",), files={"proj/a.py": "x"}),
    Case("stage-link-to-ssh-key", 8, ("submit", "--site", "lab-server-example", "--stage", "{home}/proj",
                                      "--dry-run", *CMD), ("id_ed25519", "--follow-symlinks"),
         files={"proj/a.py": "x", ".ssh/id_ed25519": "PRIVATE"}),
    # 9. control characters and read-only commands
    Case("usage-report-nonexistent-db", 9, ("usage", "report", "--db", "{home}/nonexistent/dir/x.db"),
         ("x.db",), absent=("nonexistent",)),
    Case("sites-show-escape", 9, ("sites", "show", "\x1b[2Jx"), ("site",)),
]

# Symlink and non-UTF-8 file names cannot be written through `files`: made here.
SETUP: dict[str, Callable[[Path], None]] = {
    "stage-symlink-outside": lambda home: (home / "proj" / "leak").symlink_to(home / "outside" / "secret"),
    "stage-not-utf8-name": lambda home: (home / "proj" / os.fsdecode(b"r\xe9sultat.txt")).write_text("x"),
    "stage-link-to-ssh-key": lambda home: (home / "proj" / "deploy_key").symlink_to(home / ".ssh" / "id_ed25519"),
}


# --- running a case -------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _ledger_rows(path: Path) -> set[tuple] | None:
    """The rows of a ledger, or None when it cannot be read as one."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return None
            return set(db.execute("SELECT id, token, state FROM jobs"))
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _setup(case: Case, home: Path) -> Path:
    for rel, content in case.files.items():
        target = home / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    ledger = home / "data" / "ledger.sqlite"
    if case.ledger:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        LEDGERS[case.ledger](ledger)
    if case.id in SETUP:
        SETUP[case.id](home)
    return ledger


def _env(home: Path, src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUHUB_")}
    env.update(
        PYTHONPATH=str(src),
        GPUHUB_CONFIG_DIR=str(home / "config"),
        GPUHUB_SYSTEM_CONFIG_DIR=str(home / "etc"),
        GPUHUB_DATA_DIR=str(home / "data"),
        GPUHUB_LOCAL_JOBS_DIR=str(home / "jobs"),
        HOME=str(home),
        COLUMNS="200",
        GPUHUB_SSH_PERSIST="0",  # no connection keeper outlives a case
    )
    return env


def cli(argv: tuple[str, ...] | list[str], home: Path, src: Path = REPO / "src", read_only: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m gpuhub ARGV`` with its config and data under ``home`` ({home} in ARGV is replaced).

    ``read_only``: ``home/data`` (where the ledger lives) is mounted read-only for this command alone,
    in a private mount namespace, so that even root cannot write it.
    """
    argv = [a.replace("{home}", str(home)) for a in argv]
    cmd = [sys.executable, "-m", "gpuhub", *argv]
    if read_only:
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
               str(home / "data"), *cmd]
    full_env = {**_env(home, src), **{k: v.replace("{home}", str(home)) for k, v in (env or {}).items()}}
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=full_env, cwd=home,
                          timeout=TIMEOUT, preexec_fn=_limit_memory, stdin=subprocess.DEVNULL)


def run_case(case: Case, src: Path = REPO / "src") -> Outcome:
    home = Path(tempfile.mkdtemp(prefix=f"gpuhub-bad-{case.id[:20]}-"))
    try:
        return _run_in(case, home, src)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run_in(case: Case, home: Path, src: Path) -> Outcome:
    ledger = _setup(case, home)
    before_bytes = ledger.read_bytes() if ledger.exists() else None
    before_rows = _ledger_rows(ledger) if ledger.exists() else None
    start = time.monotonic()
    problems: list[str] = []
    try:
        proc = cli(case.argv, home, src, read_only=case.read_only, env=case.env)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
        problems.append(f"no answer within {TIMEOUT:g} s")
    seconds = time.monotonic() - start
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err or "internal error" in err:
        problems.append("traceback: " + (lines[-1] if lines else "")[:160])
    if rc is not None and rc != case.exit:
        problems.append(f"exit {rc}, expected {case.exit}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, expected 1")
    if any(len(line) > 400 for line in lines):
        problems.append("an error line is longer than 400 characters")
    message = lines[-1] if lines else ""
    for needle in case.expect:
        if needle not in message:
            problems.append(f"error line does not name {needle!r}")
    for needle in case.stdout:
        if needle not in out:
            problems.append(f"stdout does not list {needle!r}")
    for rel in case.absent:
        if (home / rel).exists():
            problems.append(f"{rel} exists afterwards")
    if before_bytes is not None:
        after_rows = _ledger_rows(ledger) if ledger.exists() else None
        if before_rows is not None and (after_rows is None or not before_rows <= after_rows):
            problems.append("rows of the ledger were lost")
        if before_rows is None and not case.ledger_changes and ledger.read_bytes() != before_bytes:
            problems.append("a damaged ledger was modified")
    elif not case.ledger_changes and ledger.exists() and case.argv[0] not in ("submit",):
        problems.append("a read-only command created the ledger")
    return Outcome(case, rc, out, err, seconds, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the gpuhub sources to run")
    parser.add_argument("-k", default="", help="only cases whose id contains this")
    parser.add_argument("-v", action="store_true", help="print every failing case with its output")
    args = parser.parse_args()
    cases = [c for c in CASES if args.k in c.id]
    failed = 0
    by_item: dict[int, list[int]] = {}
    for case in cases:
        outcome = run_case(case, args.src.resolve())
        counts = by_item.setdefault(case.item, [0, 0])
        counts[0] += 1
        if not outcome.ok:
            failed += 1
            counts[1] += 1
            print(f"FAIL {case.id} ({outcome.seconds:.1f} s): {'; '.join(outcome.problems)}")
            if args.v:
                print("     stderr: " + outcome.stderr.strip()[-600:].replace("\n", "\n             "))
    for item, (tried, bad) in sorted(by_item.items()):
        print(f"item {item}: {tried} cases, {bad} failed")
    print(f"{len(cases)} cases, {failed} failed, {len(cases) - failed} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
