#!/usr/bin/env python3
"""Generate the Slurm configuration of the gpuhub testbed.

Reads every site config (site_configs/*.yaml) whose ``scheduler`` is
``slurm`` and merges what the sites need (partitions, node features, typed
GPU gres, QoS, licenses, accounts) with a fixed base set used by the
project's own tests. The point is that any job the launcher renders for a
supported site can be submitted, unchanged, to the testbed cluster.

Writes into --out-dir:
  slurm.conf, gres.conf   ready to copy into /etc/slurm
  plan.env                shell-sourceable summary used by up.sh to create
                          QoS/accounts with sacctmgr and to write testbed.env

Only the standard library and PyYAML are used. Broken or half-written YAML
files are reported on stderr and skipped, so a site config being edited does
not take the testbed down.
"""

import argparse
import glob
import os
import re
import shlex
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - up.sh installs python3-yaml
    sys.exit("gen_conf.py: PyYAML is required (apt-get install python3-yaml)")

CLUSTER = "gpuhub-test"
NODES = ["n1", "n2"]
NODE_PORTS = {"n1": 17001, "n2": 17002}
GPUS_PER_TYPE = 8          # per node and per type: fits gpu:<t>:8 and gpu:8
LICENSE_COUNT = 1000
# Declared node size: far larger than the real machine on purpose (accepted
# thanks to SlurmdParameters=config_overrides) so site-shaped requests such
# as 8 GPUs x 10 CPUs per GPU fit on one node.
NODE_SOCKETS = 2
NODE_CORES_PER_SOCKET = 64
NODE_REAL_MEMORY = 512000  # MB

BASE_PARTITIONS = {"gpu": 2 * 86400, "short": 30 * 60}  # name -> MaxTime (s)
DEFAULT_PARTITION = "gpu"
BASE_GPU_TYPES = ["a100", "v100"]
BASE_QOS = {"normal": None, "dev": 2 * 3600, "long": None}  # name -> MaxWall
BASE_ACCOUNTS = ["physics", "astro"]
BASE_LICENSES = ["sps"]

# Names that end up verbatim in slurm.conf / on sacctmgr command lines.
NAME_RE = re.compile(r"^[A-Za-z0-9_.+@-]+$")


def warn(msg):
    print("gen_conf.py: warning: %s" % msg, file=sys.stderr)


def parse_walltime(value):
    """Slurm time string (or minutes as int) -> seconds; None if unlimited."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("bad walltime %r" % (value,))
    if isinstance(value, (int, float)):
        return int(value) * 60  # Slurm reads a bare number as minutes
    text = str(value).strip()
    if text.lower() in ("", "unlimited", "infinite", "none", "null"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        # D-HH, D-HH:MM, D-HH:MM:SS
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:      # MM
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:    # MM:SS
            h, m, s = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, s = parts
        else:
            raise ValueError("bad walltime %r" % (value,))
    return ((days * 24 + h) * 60 + m) * 60 + s


def format_walltime(seconds):
    if seconds is None:
        return "UNLIMITED"
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return "%d-%02d:%02d:%02d" % (d, h, m, s)


def max_time(a, b):
    """Largest of two limits where None means 'not set' (not 'unlimited')."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def license_names(directives):
    """License names requested by raw sbatch options.

    Handles "-L X", "-LX", "-L X:n", "--licenses=X,Y", "--licenses X|Y",
    whether the option and its value are one list item or two.
    """
    if not directives:
        return []
    if isinstance(directives, str):
        directives = [directives]
    tokens = []
    for item in directives:
        try:
            tokens.extend(shlex.split(str(item)))
        except ValueError:
            tokens.extend(str(item).split())
    names = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        value = None
        if tok in ("-L", "--licenses", "--license"):
            if i + 1 < len(tokens):
                value = tokens[i + 1]
                i += 1
        elif tok.startswith("--licenses=") or tok.startswith("--license="):
            value = tok.split("=", 1)[1]
        elif tok.startswith("-L") and len(tok) > 2:
            value = tok[2:]
        i += 1
        if value is None:
            continue
        for part in re.split(r"[,|]", value):
            name = part.split(":", 1)[0].strip()
            if not name:
                continue
            if "@" in name:
                # remote (slurmdbd) licenses are not emulated
                warn("skipping remote license %r" % name)
                continue
            names.append(name)
    return names


def constraint_words(expr):
    """Feature names used in a --constraint expression ("a|b", "a&b", "[a*2]")."""
    if not expr:
        return []
    if isinstance(expr, (list, tuple)):
        words = []
        for e in expr:
            words.extend(constraint_words(e))
        return words
    words = []
    for w in re.split(r"[|&,()\[\]*\s!]+", str(expr)):
        if w and not w.isdigit():
            words.append(w)
    return words


class Plan:
    def __init__(self):
        self.partitions = dict(BASE_PARTITIONS)
        self.gpu_types = list(BASE_GPU_TYPES)
        self.features = list(BASE_GPU_TYPES)
        self.qos = dict(BASE_QOS)
        self.accounts = list(BASE_ACCOUNTS)
        self.licenses = list(BASE_LICENSES)
        self.sites = []

    @staticmethod
    def _add(lst, name, what, source):
        if name is None:
            return
        name = str(name).strip()
        if not name:
            return
        if not NAME_RE.match(name):
            warn("%s: ignoring %s name %r" % (source, what, name))
            return
        if name not in lst:
            lst.append(name)

    def add_accounts(self, accounts, source):
        if isinstance(accounts, str):
            accounts = [accounts]
        for acct in accounts or []:
            # sacctmgr lower-cases account names; keep the plan identical
            self._add(self.accounts, str(acct).lower(), "account", source)

    def add_site(self, data, source):
        name = data.get("name") or os.path.basename(source)
        self.sites.append(str(name))
        self.add_accounts(data.get("testbed_accounts"), source)
        for lic in license_names(data.get("directives")):
            self._add(self.licenses, lic, "license", source)

        profiles = data.get("partitions") or {}
        if isinstance(profiles, dict):
            profiles = list(profiles.values())
        elif not isinstance(profiles, list):
            warn("%s: 'partitions' is neither a mapping nor a list" % source)
            profiles = []
        for prof in profiles:
            if not isinstance(prof, dict):
                continue
            self._add_profile(prof, source)

    def _add_profile(self, prof, source):
        part = prof.get("partition") or DEFAULT_PARTITION
        part = str(part)
        if not NAME_RE.match(part):
            warn("%s: ignoring partition name %r" % (source, part))
            part = None

        walls = []
        try:
            walls.append(parse_walltime(prof.get("max_walltime")))
        except ValueError as exc:
            warn("%s: %s" % (source, exc))

        qos_list = prof.get("qos") or []
        if isinstance(qos_list, (str, dict)):
            qos_list = [qos_list]
        for q in qos_list:
            if isinstance(q, str):
                q = {"name": q}
            if not isinstance(q, dict) or not q.get("name"):
                continue
            qname = str(q["name"]).lower()
            if not NAME_RE.match(qname):
                warn("%s: ignoring qos name %r" % (source, qname))
                continue
            try:
                wall = parse_walltime(q.get("max_walltime"))
            except ValueError as exc:
                warn("%s: %s" % (source, exc))
                wall = None
            walls.append(wall)
            self.qos[qname] = max_time(self.qos.get(qname), wall)

        if part is not None:
            # The partition must admit the longest job any profile or QoS on
            # it allows; otherwise Slurm would reject a valid site job.
            limit = self.partitions.get(part)
            for w in walls:
                limit = max_time(limit, w)
            self.partitions[part] = limit

        self._add(self.gpu_types, prof.get("gres_type"), "gres type", source)
        for word in constraint_words(prof.get("constraint")):
            self._add(self.features, word, "feature", source)
        for lic in license_names(prof.get("directives")):
            self._add(self.licenses, lic, "license", source)


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 numbers.

    PyYAML reads an unquoted ``max_walltime: 20:00:00`` as the integer 72000;
    keep such values as strings so they parse as Slurm times.
    """


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers
          if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
          or not regexp.match("20:00:00")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
               r"|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))


def load_yaml(path):
    try:
        with open(path) as fh:
            return yaml.load(fh, Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:
        warn("cannot read %s: %s" % (path, exc))
        return None


def build_plan(site_dir, accounts_file):
    plan = Plan()
    files = sorted(glob.glob(os.path.join(site_dir, "*.yaml"))
                   + glob.glob(os.path.join(site_dir, "*.yml")))
    for path in files:
        data = load_yaml(path)
        if not isinstance(data, dict):
            continue
        if str(data.get("scheduler", "")).strip().lower() != "slurm":
            continue
        plan.add_site(data, os.path.basename(path))
    if accounts_file and os.path.exists(accounts_file):
        data = load_yaml(accounts_file)
        if isinstance(data, dict):
            plan.add_accounts(data.get("testbed_accounts"),
                              os.path.basename(accounts_file))
    # Stable output: unchanged inputs must give byte-identical files so that
    # up.sh can tell whether a restart is needed.
    base_types = [t for t in BASE_GPU_TYPES]
    plan.gpu_types = base_types + sorted(set(plan.gpu_types) - set(base_types))
    plan.features = sorted(set(plan.features))
    plan.licenses = sorted(set(plan.licenses))
    plan.accounts = BASE_ACCOUNTS + sorted(set(plan.accounts) - set(BASE_ACCOUNTS))
    return plan


def render_slurm_conf(plan, hostname, state_dir):
    slurm_dir = os.path.join(state_dir, "slurm")
    log_dir = os.path.join(state_dir, "log")
    run_dir = os.path.join(state_dir, "run")
    gres = ",".join("gpu:%s:%d" % (t, GPUS_PER_TYPE) for t in plan.gpu_types)
    tres = ",".join(["gres/gpu"] + ["gres/gpu:%s" % t for t in plan.gpu_types])
    lines = [
        "# Generated by scripts/testbed/gen_conf.py -- do not edit by hand.",
        "# Sites: %s" % (", ".join(plan.sites) or "(none)"),
        "ClusterName=%s" % CLUSTER,
        # hostname(addr): slurmctld recognises itself by name, everybody
        # talks to it over loopback.
        "SlurmctldHost=%s(127.0.0.1)" % hostname,
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "StateSaveLocation=%s/ctld" % slurm_dir,
        "SlurmdSpoolDir=%s/d-%%n" % slurm_dir,
        "SlurmctldPidFile=%s/slurmctld.pid" % run_dir,
        "SlurmdPidFile=%s/slurmd-%%n.pid" % run_dir,
        "SlurmctldLogFile=%s/slurmctld.log" % log_dir,
        "SlurmdLogFile=%s/slurmd-%%n.log" % log_dir,
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "MailProg=/bin/true",  # no mailer here; avoids a startup error
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        # The nodes claim more CPUs/memory/GPUs than the machine has.
        "SlurmdParameters=config_overrides",
        # No cgroups: they are not usable on every CI machine.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=30",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # Without a default, CR_Core_Memory gives a job the whole node memory
        # and jobs could not share a node.
        "DefMemPerCPU=1024",
        "GresTypes=gpu",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_min_interval=100000",
        "PriorityType=priority/basic",
        # Reject at submission what can never run (like most real sites).
        "EnforcePartLimits=ALL",
        "ReturnToService=2",
        "MinJobAge=300",
        "KillWait=2",
        "InactiveLimit=0",
        "Waittime=0",
        "MessageTimeout=10",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "UnkillableStepTimeout=30",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=127.0.0.1",
        "AccountingStoragePort=6819",
        "AccountingStorageEnforce=associations,limits,qos",
        "AccountingStorageTRES=%s" % tres,
        "Licenses=%s" % ",".join("%s:%d" % (l, LICENSE_COUNT)
                                 for l in plan.licenses),
        "",
    ]
    cpus = NODE_SOCKETS * NODE_CORES_PER_SOCKET
    for node in NODES:
        lines.append(
            "NodeName=%s NodeAddr=127.0.0.1 NodeHostname=%s Port=%d "
            "CPUs=%d Boards=1 SocketsPerBoard=%d CoresPerSocket=%d "
            "ThreadsPerCore=1 RealMemory=%d Gres=%s Features=%s State=UNKNOWN"
            % (node, hostname, NODE_PORTS[node], cpus, NODE_SOCKETS,
               NODE_CORES_PER_SOCKET, NODE_REAL_MEMORY, gres,
               ",".join(plan.features)))
    lines.append("")
    node_list = ",".join(NODES)
    for part in sorted(plan.partitions,
                       key=lambda p: (p != DEFAULT_PARTITION, p)):
        lines.append(
            "PartitionName=%s Nodes=%s MaxTime=%s State=UP%s"
            % (part, node_list, format_walltime(plan.partitions[part]),
               " Default=YES" if part == DEFAULT_PARTITION else ""))
    return "\n".join(lines) + "\n"


def gpu_files(state_dir, node, plan):
    """(type, [device paths]) for each GPU type on a node."""
    out = []
    k = 0
    for t in plan.gpu_types:
        paths = []
        for _ in range(GPUS_PER_TYPE):
            paths.append(os.path.join(state_dir, "gpus", node, "nvidia%d" % k))
            k += 1
        out.append((t, paths))
    return out


def render_gres_conf(plan, state_dir):
    lines = [
        "# Generated by scripts/testbed/gen_conf.py -- do not edit by hand.",
        # Fake GPUs: plain files. Without File= slurmd reports 0 GPUs and
        # the node is drained for having fewer GRES than configured.
        "AutoDetect=off",
    ]
    for node in NODES:
        for t, paths in gpu_files(state_dir, node, plan):
            first = os.path.basename(paths[0])[len("nvidia"):]
            last = os.path.basename(paths[-1])[len("nvidia"):]
            lines.append("NodeName=%s Name=gpu Type=%s File=%s/nvidia[%s-%s]"
                         % (node, t, os.path.dirname(paths[0]), first, last))
    return "\n".join(lines) + "\n"


def render_plan_env(plan, state_dir):
    def q(v):
        return shlex.quote(v)
    qos = " ".join("%s=%s" % (n, "" if w is None else format_walltime(w))
                   for n, w in sorted(plan.qos.items()))
    files = []
    for node in NODES:
        for _, paths in gpu_files(state_dir, node, plan):
            files.extend(paths)
    return "".join([
        "PLAN_CLUSTER=%s\n" % q(CLUSTER),
        "PLAN_NODES=%s\n" % q(",".join(NODES)),
        "PLAN_GPU_TYPES=%s\n" % q(",".join(plan.gpu_types)),
        "PLAN_PARTITIONS=%s\n" % q(",".join(
            sorted(plan.partitions, key=lambda p: (p != DEFAULT_PARTITION, p)))),
        "PLAN_FEATURES=%s\n" % q(",".join(plan.features)),
        "PLAN_LICENSES=%s\n" % q(",".join(plan.licenses)),
        "PLAN_ACCOUNTS=%s\n" % q(",".join(plan.accounts)),
        # space separated name=MaxWall pairs, empty MaxWall = no limit
        "PLAN_QOS=%s\n" % q(qos),
        "PLAN_GPU_FILES=%s\n" % q(" ".join(files)),
        "PLAN_SITES=%s\n" % q(",".join(plan.sites)),
    ])


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site-dir", default=os.path.join(repo, "site_configs"))
    ap.add_argument("--accounts", default=os.path.join(here, "accounts.yaml"))
    ap.add_argument("--hostname", default=None,
                    help="this machine's short hostname (default: uname)")
    ap.add_argument("--state-dir", default="/var/lib/gpuhub-testbed")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)

    hostname = args.hostname or os.uname().nodename.split(".")[0]
    plan = build_plan(args.site_dir, args.accounts)
    os.makedirs(args.out_dir, exist_ok=True)
    outputs = {
        "slurm.conf": render_slurm_conf(plan, hostname, args.state_dir),
        "gres.conf": render_gres_conf(plan, args.state_dir),
        "plan.env": render_plan_env(plan, args.state_dir),
    }
    for name, text in outputs.items():
        with open(os.path.join(args.out_dir, name), "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
