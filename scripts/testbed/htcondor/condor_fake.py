"""A stateful stand-in for an HTCondor schedd and pool: condor_submit, condor_q, condor_history,
condor_rm and condor_status (the program's name says which). For tests only.

HTCondor daemons cannot be installed here, so this plays them, on top of HTCondor's own Python
bindings: submit descriptions are read by ``htcondor2.Submit`` (HTCondor's parser, macros and
queue statements included), job ads are ``classad2`` ads, constraints and ``-af`` expressions
are evaluated by the ClassAd library, and ``-json`` is the library's own JSON writer, so the
output is HTCondor's: ``[``, ads separated by ``,``, ``]``; nothing at all when nothing matches;
expressions written ``"\\/Expr(...)\\/"``.

Jobs really run, as the submitting user, in the directory condor_submit ran in (no file
transfer): stdout/stderr go to ``output``/``error``. A pool of a few partitionable GPU slots
(``pool.json``) decides which idle jobs start. State lives in ``$GPUHUB_FAKE_CONDOR_DIR``
(default ``/var/lib/gpuhub-testbed/condor``), shared by all users as a schedd's queue is; every
command first brings the queue up to date (jobs that ended leave it for the history, jobs over
``allowed_job_duration`` are held, idle jobs start where GPUs are free).
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import classad2
import htcondor2

STATE_DIR = Path(os.environ.get("GPUHUB_FAKE_CONDOR_DIR", "/var/lib/gpuhub-testbed/condor"))
SCHEDD = "submit.fake-pool"
IDLE, RUNNING, REMOVED, COMPLETED, HELD = 1, 2, 3, 4, 5
DEFAULT_POOL = [
    {"Machine": "gpu01.fake-pool", "GPUs": 4, "DeviceName": "NVIDIA A100-SXM4-40GB", "Capability": 8.0,
     "GlobalMemoryMb": 40536, "Cpus": 64, "State": "Unclaimed"},
    {"Machine": "gpu02.fake-pool", "GPUs": 4, "DeviceName": "Tesla V100-PCIE-32GB", "Capability": 7.0,
     "GlobalMemoryMb": 32510, "Cpus": 40, "State": "Unclaimed"},
    {"Machine": "gpu03.fake-pool", "GPUs": 2, "DeviceName": "NVIDIA H100 80GB HBM3", "Capability": 9.0,
     "GlobalMemoryMb": 81559, "Cpus": 32, "State": "Drained"},
]

# submit command -> job attribute, for the commands gpuhub writes (condor_submit's own mapping).
ATTRIBUTE_OF = {
    "request_gpus": "RequestGPUs", "request_cpus": "RequestCpus", "request_memory": "RequestMemory",
    "allowed_job_duration": "AllowedJobDuration", "batch_name": "JobBatchName", "max_retries": "MaxRetries",
}


class Failure(Exception):
    """An error condor_* would print (stderr) before exiting 1."""


# --- state ----------------------------------------------------------------------------------------

class State:
    def __init__(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(STATE_DIR / "lock", os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        path = STATE_DIR / "state.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        self.next_cluster = data.get("next_cluster", 1)
        self.queue = [classad2.parseOne(text) for text in data.get("queue", [])]
        self.history = [classad2.parseOne(text) for text in data.get("history", [])]
        self.pids: dict[str, int] = data.get("pids", {})
        pool_file = STATE_DIR / "pool.json"
        self.pool = json.loads(pool_file.read_text()) if pool_file.exists() else DEFAULT_POOL

    def save(self) -> None:
        data = {"next_cluster": self.next_cluster, "queue": [str(a) for a in self.queue],
                "history": [str(a) for a in self.history], "pids": self.pids}
        tmp = STATE_DIR / f"state.json.{os.getpid()}"
        tmp.write_text(json.dumps(data))
        os.chmod(tmp, 0o666)
        os.replace(tmp, STATE_DIR / "state.json")
        os.close(self._lock)


def job_id(ad: classad2.ClassAd) -> str:
    return f"{ad['ClusterId']}.{ad['ProcId']}"


def run_dir() -> Path:
    path = STATE_DIR / "run"
    path.mkdir(exist_ok=True)
    return path


# --- the schedd's work, done at each command --------------------------------------------------

def used_gpus(state: State) -> dict[str, int]:
    used: dict[str, int] = {}
    for ad in state.queue:
        if ad.get("JobStatus") == RUNNING:
            host = str(ad.get("RemoteHost", "")).rsplit("@", 1)[-1]
            used[host] = used.get(host, 0) + int(ad.get("GPUsProvisioned", 0))
    return used


def machine_ad(machine: dict) -> classad2.ClassAd:
    return classad2.ClassAd({
        "Machine": machine["Machine"], "GPUs": machine["GPUs"], "Cpus": machine["Cpus"],
        "GPUs_DeviceName": machine["DeviceName"], "GPUs_Capability": machine["Capability"],
        "GPUs_GlobalMemoryMb": machine["GlobalMemoryMb"], "OpSysMajorVer": 9,
    })


def fits(ad: classad2.ClassAd, machine: dict, free: int) -> bool:
    if machine["State"] in ("Owner", "Drained") or int(ad.get("RequestGPUs", 0)) > free:
        return False
    gpu = classad2.ClassAd({"Capability": machine["Capability"], "GlobalMemoryMb": machine["GlobalMemoryMb"]})
    require = ad.get("RequireGPUs")
    if require is not None and classad2.ExprTree(str(require)).eval(gpu) is not True:
        return False
    if ad.get("Requirements") is None:
        return True
    target = machine_ad(machine)
    target["GPUs"] = free
    return bool(ad.matches(target))


def tick(state: State) -> None:
    now = int(time.time())
    for ad in list(state.queue):
        if ad.get("JobStatus") == RUNNING:
            finish_or_hold(state, ad, now)
    used = used_gpus(state)
    for ad in state.queue:
        if ad.get("JobStatus") != IDLE or not may_materialize(state, ad):
            continue
        for machine in state.pool:
            free = machine["GPUs"] - used.get(machine["Machine"], 0)
            if fits(ad, machine, free):
                start(state, ad, machine, now)
                used[machine["Machine"]] = used.get(machine["Machine"], 0) + int(ad.get("RequestGPUs", 0))
                break


def may_materialize(state: State, ad: classad2.ClassAd) -> bool:
    limit = ad.get("JobMaterializeLimit")
    if limit is None:
        return True
    active = sum(1 for o in state.queue if o["ClusterId"] == ad["ClusterId"] and o.get("JobStatus") == RUNNING)
    return active < int(limit)


def start(state: State, ad: classad2.ClassAd, machine: dict, now: int) -> None:
    gpus = int(ad.get("RequestGPUs", 0))
    slot = f"slot1_{ad['ClusterId']}{ad['ProcId']}@{machine['Machine']}"
    env = dict(os.environ)
    env.update(parse_environment(str(ad.get("Environment", ""))))
    assigned = ",".join(f"GPU-{machine['Machine'][:5]}{i}" for i in range(gpus))
    env.update(_CONDOR_AssignedGPUs=assigned, CUDA_VISIBLE_DEVICES=assigned, _CONDOR_SLOT=slot.split("@")[0])
    exit_file = run_dir() / f"{job_id(ad)}.exit"
    exit_file.unlink(missing_ok=True)
    cmd = Path(str(ad["Cmd"]))
    cmd.chmod(cmd.stat().st_mode | 0o100)  # the starter makes the transferred executable executable
    wrapper = ('"$1" > "$2" 2> "$3"; rc=$?; printf "%s %s\\n" "$rc" "$(date +%s)" > "$4.tmp" && mv "$4.tmp" "$4"')
    proc = subprocess.Popen(
        ["bash", "-c", wrapper, "condor-starter", str(ad["Cmd"]), str(ad["Out"]), str(ad["Err"]), str(exit_file)],
        cwd=str(ad["Iwd"]), env=env, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state.pids[job_id(ad)] = proc.pid
    ad["JobStatus"] = RUNNING
    ad["EnteredCurrentStatus"] = now
    ad["JobCurrentStartDate"] = now
    if ad.get("JobStartDate") is None:
        ad["JobStartDate"] = now
    ad["RemoteHost"] = slot
    ad["GPUsProvisioned"] = gpus
    ad["CpusProvisioned"] = int(ad.get("RequestCpus", 1))
    ad["AssignedGPUs"] = assigned


def finish_or_hold(state: State, ad: classad2.ClassAd, now: int) -> None:
    key = job_id(ad)
    exit_file = run_dir() / f"{key}.exit"
    limit = ad.get("AllowedJobDuration")
    if exit_file.exists():
        rc, ended = (int(x) for x in exit_file.read_text().split())
        account_run(ad, ended)
        if rc > 128:
            ad["ExitBySignal"] = True
            ad["ExitSignal"] = rc - 128
        else:
            ad["ExitBySignal"] = False
            ad["ExitCode"] = rc
        leave_queue(state, ad, COMPLETED, ended)
        ad["CompletionDate"] = ended
    elif not alive(state.pids.get(key)):
        account_run(ad, now)
        ad["ExitBySignal"] = True
        ad["ExitSignal"] = 9
        leave_queue(state, ad, COMPLETED, now)
        ad["CompletionDate"] = now
    elif limit is not None and now - int(ad["JobCurrentStartDate"]) > int(limit):
        kill(state.pids.pop(key, None))
        account_run(ad, now)
        ad["JobStatus"] = HELD
        ad["EnteredCurrentStatus"] = now
        ad["HoldReason"] = f"The job exceeded allowed job duration of {int(limit)} seconds"
        ad["HoldReasonCode"] = 46
        ad["LastRemoteHost"] = ad.get("RemoteHost")
        del ad["RemoteHost"]


def account_run(ad: classad2.ClassAd, ended: int) -> None:
    run = max(0, ended - int(ad["JobCurrentStartDate"]))
    ad["RemoteWallClockTime"] = float(ad.get("RemoteWallClockTime", 0) + run)
    ad["CommittedTime"] = int(ad.get("CommittedTime", 0) + run)


def leave_queue(state: State, ad: classad2.ClassAd, status: int, when: int) -> None:
    ad["JobStatus"] = status
    ad["EnteredCurrentStatus"] = when
    if ad.get("RemoteHost") is not None:
        ad["LastRemoteHost"] = ad["RemoteHost"]
        del ad["RemoteHost"]
    state.pids.pop(job_id(ad), None)
    state.queue.remove(ad)
    state.history.append(ad)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def kill(pid: int | None) -> None:
    if pid:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except OSError:
                return
            time.sleep(0.2)


def parse_environment(text: str) -> dict[str, str]:
    """The submit language's "new" environment syntax: ``"A=1 B='two words'"``."""
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    return dict(item.split("=", 1) for item in shlex.split(text) if "=" in item)


# --- commands -------------------------------------------------------------------------------------

def condor_submit(state: State, args: list[str]) -> str:
    terse = "-terse" in args
    files = [a for a in args if not a.startswith("-")]
    if len(files) != 1:
        raise Failure("ERROR: give one submit description file")
    try:
        text = Path(files[0]).read_text()
    except OSError as exc:
        raise Failure(f"ERROR: Can't open {files[0]}  with flags 0 ({exc.strerror})") from None
    submit = htcondor2.Submit(text)
    qargs = submit.getQArgs().strip()
    items = submit.itemdata()
    items = list(items) if items is not None else [{} for _ in range(int(qargs or 1))]
    cluster = state.next_cluster
    ads = [job_ad(submit, cluster, proc, item) for proc, item in enumerate(items)]
    cmd = Path(str(ads[0]["Cmd"]))
    if not cmd.is_file():
        raise Failure(f"ERROR: Executable file {cmd} does not exist")
    for attr in ("Out", "Err", "UserLog"):
        parent = Path(str(ads[0][attr])).parent
        if not parent.is_dir():
            raise Failure(f"ERROR: Invalid log file: \"{ads[0][attr]}\" (No such file or directory)")
    state.next_cluster += 1
    state.queue.extend(ads)
    tick(state)
    if terse:
        return f"{cluster}.0 - {cluster}.{len(ads) - 1}\n"
    return f"Submitting job(s){'.' * len(ads)}\n{len(ads)} job(s) submitted to cluster {cluster}.\n"


def job_ad(submit: htcondor2.Submit, cluster: int, proc: int, item: dict[str, str]) -> classad2.ClassAd:
    sub = htcondor2.Submit(dict(submit.items()))
    for key, value in item.items():
        sub[key] = value
    sub["ClusterId"], sub["ProcId"] = str(cluster), str(proc)
    now, user, iwd = int(time.time()), getpass.getuser(), os.getcwd()

    def path(key: str, default: str) -> str:
        value = sub.expand(key) if key in sub else default
        return value if value.startswith("/") else f"{iwd}/{value}"

    ad = classad2.ClassAd({
        "ClusterId": cluster, "ProcId": proc, "GlobalJobId": f"{SCHEDD}#{cluster}.{proc}#{now}",
        "Owner": user, "User": f"{user}@fake-pool", "QDate": now, "JobStatus": IDLE, "EnteredCurrentStatus": now,
        "JobUniverse": 5, "Iwd": iwd, "Cmd": path("executable", ""), "Out": path("output", "/dev/null"),
        "Err": path("error", "/dev/null"), "UserLog": path("log", "/dev/null"),
        "RequestCpus": 1, "RequestMemory": 128, "RequestDisk": 1024, "RemoteWallClockTime": 0.0,
        "CommittedTime": 0, "JobPrio": 0, "NumJobStarts": 0,
    })
    for command, attribute in ATTRIBUTE_OF.items():
        if command in sub:
            value = sub.expand(command)
            ad[attribute] = value if command == "batch_name" else classad2.ExprTree(value).eval()
    if "environment" in sub:
        ad["Environment"] = sub.expand("environment").strip('"')
    if "accounting_group" in sub:
        group = sub.expand("accounting_group")
        ad["AcctGroup"], ad["AcctGroupUser"], ad["AccountingGroup"] = group, user, f"{group}.{user}"
    if "max_materialize" in sub:
        ad["JobMaterializeLimit"] = int(sub.expand("max_materialize"))
    if "requirements" in sub:
        ad["Requirements"] = classad2.ExprTree(f"({sub.expand('requirements')}) && (TARGET.GPUs >= RequestGPUs)")
    require = [sub.expand("require_gpus")] if "require_gpus" in sub else []
    if "gpus_minimum_memory" in sub:
        require.append(f"GlobalMemoryMb >= {int(sub.expand('gpus_minimum_memory'))}")
    if "gpus_minimum_capability" in sub:
        require.append(f"Capability >= {sub.expand('gpus_minimum_capability')}")
    if require:
        ad["RequireGPUs"] = classad2.ExprTree(" && ".join(f"({r})" for r in require))
    for key in sub.keys():
        if key.startswith("MY.") or key.startswith("+"):
            ad[key.split(".", 1)[-1].lstrip("+")] = classad2.ExprTree(sub.expand(key)).eval()
    return ad


def options(args: list[str]) -> tuple[dict[str, str], list[str], list[str] | None]:
    """-constraint/-attributes/-limit values, bare words (ids), and -af attributes."""
    opts: dict[str, str] = {}
    words: list[str] = []
    autoformat = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-af") or arg.startswith("-autoformat"):
            autoformat = args[i + 1:]
            break
        if arg in ("-constraint", "-attributes", "-limit", "-match", "-name", "-pool"):
            opts[arg[1:]] = args[i + 1]
            i += 2
            continue
        if arg.startswith("-"):
            opts[arg[1:]] = ""
        else:
            words.append(arg)
        i += 1
    return opts, words, autoformat


def selected(ads: list[classad2.ClassAd], opts: dict[str, str], words: list[str]) -> list[classad2.ClassAd]:
    out = []
    constraint = classad2.ExprTree(opts["constraint"]) if "constraint" in opts else None
    for ad in ads:
        if words and not any(w in (str(ad["ClusterId"]), job_id(ad)) for w in words):
            continue
        if constraint is not None and constraint.eval(ad) is not True:
            continue
        out.append(ad)
    return out


def show(ads: list[classad2.ClassAd], opts: dict[str, str], autoformat: list[str] | None) -> str:
    if autoformat is not None:
        lines = []
        for ad in ads:
            values = []
            for expr in autoformat:
                value = classad2.ExprTree(expr).eval(ad)
                values.append("undefined" if value is classad2.Value.Undefined else
                              "true" if value is True else "false" if value is False else str(value))
            lines.append("\t".join(values) + "\n")
        return "".join(lines)
    if "json" not in opts:
        return "".join(f"{job_id(ad)}\n" for ad in ads)
    if not ads:
        return ""  # condor_q/condor_history -json print nothing when nothing matches
    if "attributes" in opts:
        wanted = {a.strip().lower() for a in opts["attributes"].split(",")}
        ads = [classad2.ClassAd({k: ad.lookup(k) for k in ad.keys() if k.lower() in wanted}) for ad in ads]
    return "[\n" + ",\n".join(ad.printJson() for ad in ads) + "\n]\n"


def condor_q(state: State, args: list[str]) -> str:
    opts, words, autoformat = options(args)
    ads = state.queue
    if "allusers" not in opts and "all" not in opts:
        ads = [ad for ad in ads if ad["Owner"] == getpass.getuser()]
    return show(selected(ads, opts, words), opts, autoformat)


def condor_history(state: State, args: list[str]) -> str:
    opts, words, autoformat = options(args)
    ads = selected(list(reversed(state.history)), opts, words)  # most recent first, as the history file reads
    limit = opts.get("limit") or opts.get("match")
    return show(ads[: int(limit)] if limit else ads, opts, autoformat)


def condor_rm(state: State, args: list[str]) -> str:
    opts, words, _ = options(args)
    user, now, out, missing = getpass.getuser(), int(time.time()), [], []
    for word in words:
        ads = [ad for ad in state.queue if ad["Owner"] == user and word in (str(ad["ClusterId"]), job_id(ad))]
        if not ads:
            missing.append(f"Couldn't find/remove all jobs {'matching' if '.' in word else 'in cluster'} {word}.")
            continue
        for ad in ads:
            if ad.get("JobStatus") == RUNNING:
                kill(state.pids.get(job_id(ad)))
                account_run(ad, now)
            ad["RemoveReason"] = f"via condor_rm (by user {user})"
            leave_queue(state, ad, REMOVED, now)
        out.append(f"Job {word} marked for removal" if "." in word else
                   f"All jobs in cluster {word} have been marked for removal")
    if missing:
        sys.stderr.write("".join(m + "\n" for m in missing))
    if missing and not out:
        raise Failure("")
    return "".join(line + "\n" for line in out)


def condor_status(state: State, args: list[str]) -> str:
    opts, words, autoformat = options(args)
    used: dict[str, list[classad2.ClassAd]] = {}
    for ad in state.queue:
        if ad.get("JobStatus") == RUNNING:
            used.setdefault(str(ad["RemoteHost"]).rsplit("@", 1)[-1], []).append(ad)
    slots = []
    for machine in state.pool:
        jobs = used.get(machine["Machine"], [])
        taken = sum(int(j.get("GPUsProvisioned", 0)) for j in jobs)
        pslot = machine_ad(machine)
        pslot.update({"Name": f"slot1@{machine['Machine']}", "SlotType": "Partitionable", "State": machine["State"],
                      "GPUs": machine["GPUs"] - taken, "TotalSlotGPUs": machine["GPUs"]})
        slots.append(pslot)
        for job in jobs:
            dslot = machine_ad(machine)
            dslot.update({"Name": str(job["RemoteHost"]), "SlotType": "Dynamic", "State": "Claimed",
                          "GPUs": int(job.get("GPUsProvisioned", 0)), "RemoteOwner": str(job["Owner"])})
            slots.append(dslot)
    constraint = classad2.ExprTree(opts["constraint"]) if "constraint" in opts else None
    slots = [s for s in slots if constraint is None or constraint.eval(s) is True]
    if autoformat is None and "json" not in opts:
        return "".join(f"{s['Name']}\t{s['State']}\t{s['GPUs']}\n" for s in slots)
    return show(slots, opts, autoformat)


COMMANDS = {"condor_submit": condor_submit, "condor_q": condor_q, "condor_history": condor_history,
            "condor_rm": condor_rm, "condor_status": condor_status}


def main() -> int:
    name = Path(sys.argv[0]).name
    command = COMMANDS.get(name) or COMMANDS.get(sys.argv[1] if len(sys.argv) > 1 else "")
    args = sys.argv[1:] if name in COMMANDS else sys.argv[2:]
    if command is None:
        sys.stderr.write(f"condor_fake: unknown command {name}\n")
        return 2
    state = State()
    try:
        tick(state)
        output = command(state, args)
    except Failure as exc:
        state.save()
        if str(exc):
            sys.stderr.write(f"{exc}\n")
        return 1
    state.save()
    sys.stdout.write(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
