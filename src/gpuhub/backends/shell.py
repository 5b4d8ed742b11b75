"""Lab servers with no scheduler (``ssh``) and this machine (``local``): a plain bash script.

A job is a directory, ``~/.gpuhub/jobs/<token>`` on the machine that runs it (on this machine,
``$GPUHUB_LOCAL_JOBS_DIR/<token>`` when that variable is set). The token is the job's id. The
directory holds everything the job is:

=============  ==============================================================================
``job.sh``     the rendered script, run with bash in this directory
``job.out``    its standard output; ``job.err`` its standard error
``pid``        ``PID START EPOCH``: the process-group leader, its start time in clock ticks
               (field 22 of ``/proc/PID/stat``, so a reused pid is never taken for the job) and
               the start time in epoch seconds
``exitcode``   ``CODE EPOCH``: the exit status (128+N after signal N) and the end time; written
               last, atomically, so its presence means the job is over
``cancelled``  marker left by :func:`cancel`
``launch.lock``  made once by the launcher so a repeated submit never starts the job twice
=============  ==============================================================================

The job runs in its own session (``setsid``), detached from every terminal and stream, so it
survives gpuhub exiting and the SSH connection closing. Polling and cancelling many jobs each
take one command on the site.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
from typing import TYPE_CHECKING, Any

from gpuhub.backends.common import job_env, setup_lines
from gpuhub.errors import GpuhubError
from gpuhub.states import JobStatus, State

if TYPE_CHECKING:
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.transport.base import Transport

FILES = {"job.sh": "shell.sh.j2"}
STDIN = None


def submit_argv() -> list[str]:
    return ["bash", "job.sh"]


def context(alloc: Allocation, token: str | None) -> dict[str, Any]:
    env = job_env(alloc)
    if token:
        env["GPUHUB_TOKEN"] = token
    return {"directives": [], "env": env, "setup": setup_lines(alloc), "array_var": None}


# --- operations on a live machine (through a transport) -----------------------------------------

JOBS_ROOT = "~/.gpuhub/jobs"
LOCAL_JOBS_ENV = "GPUHUB_LOCAL_JOBS_DIR"
MAIN_FILE = "job.sh"
STDOUT_FILE = "job.out"
STDERR_FILE = "job.err"
PENDING_GRACE_MINUTES = 2  # a directory without a pid this young is a job still starting

# A token becomes a directory name: no '/', no leading '.', nothing the shell could mangle.
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _check_id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise GpuhubError(f"{value!r} is not a valid job token (letters, digits, '_', '.', '-')")
    return value


def jobs_root() -> str:
    """Where job directories live: ``~/.gpuhub/jobs``, or ``$GPUHUB_LOCAL_JOBS_DIR`` (meant for tests)."""
    override = os.environ.get(LOCAL_JOBS_ENV)
    return (override.rstrip("/") or "/") if override else JOBS_ROOT


def job_dir(token: str) -> str:
    return f"{jobs_root()}/{_check_id(token)}"


# Shell pieces shared by the snippets below (bash; they run on the site).

# "$1" with a leading ~/ made into $HOME/ (the path is passed as an argument, never expanded).
_ROOT = r"""root=$1
case $root in "~") root=$HOME ;; "~/"*) root=$HOME/${root#"~/"} ;; esac
"""

# st PID: sets ST to the start identity of live process PID (empty when gone or a zombie).
_ST = r"""st() {
  ST=
  if [ -r /proc/self/stat ]; then
    local s
    { read -r s < "/proc/$1/stat"; } 2>/dev/null || return 1
    s=${s##*) }
    set -f; set -- $s; set +f
    case $1 in Z|X|x) return 1 ;; esac
    ST=${20}
  else
    case $(ps -o stat= -p "$1" 2>/dev/null) in ""|Z*) return 1 ;; esac
    ST=$(ps -o lstart= -p "$1" 2>/dev/null | tr -d ' ')
  fi
  [ -n "$ST" ]
}
"""

# The detached job ($1 = its directory). It records its own pid ($$ is the session and process
# group leader after setsid), then runs the script; TERM is trapped here only so that, once the
# script has died of it, the exit status is still recorded.
_WRAPPER = (
    _ST
    + rf"""cd -- "$1" || exit 1
trap : TERM
st $$ || ST=-
printf '%s %s %s\n' "$$" "$ST" "$(date +%s)" > pid.tmp && mv -f pid.tmp pid
if [ -e cancelled ]; then
  rc=143
else
  bash {MAIN_FILE} > {STDOUT_FILE} 2> {STDERR_FILE}
  rc=$?
fi
printf '%s %s\n' "$rc" "$(date +%s)" > exitcode.tmp && mv -f exitcode.tmp exitcode
"""
)

# Starts the job once ($1 = job directory) and prints its pid.
LAUNCHER = (
    _ROOT
    + rf"""d=$root
cd -- "$d" 2>/dev/null || {{ echo "gpuhub: no job directory $d" >&2; exit 1; }}
[ -f {MAIN_FILE} ] || {{ echo "gpuhub: $d/{MAIN_FILE} is missing" >&2; exit 1; }}
wrapper={shlex.quote(_WRAPPER)}
if mkdir launch.lock 2>/dev/null; then
  # setsid -f forks by itself: no '&', so the job does not start with SIGINT ignored
  if setsid -f true </dev/null >/dev/null 2>&1; then
    setsid -f nohup bash -c "$wrapper" gpuhub-job "$d" </dev/null >/dev/null 2>&1
  elif command -v setsid >/dev/null 2>&1; then
    setsid nohup bash -c "$wrapper" gpuhub-job "$d" </dev/null >/dev/null 2>&1 &
  elif command -v perl >/dev/null 2>&1; then
    nohup perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or exit 127' bash -c "$wrapper" gpuhub-job "$d" \
      </dev/null >/dev/null 2>&1 &
  else
    echo "gpuhub: neither setsid nor perl is available to detach the job" >&2; rmdir launch.lock; exit 1
  fi
fi
i=0
until [ -s pid ]; do
  i=$((i + 1))
  [ "$i" -le 200 ] || {{ echo "gpuhub: the job in $d did not start (no pid file after 10 s)" >&2; exit 1; }}
  sleep 0.05
done
read -r p _ < pid
echo "$p"
"""
)

# One line per id read on stdin: id|word|exit code|start epoch|end epoch ($1 = jobs root).
POLL = (
    _ROOT
    + _ST
    + rf"""finished() {{
  [ -r "$d/exitcode" ] || return 1
  read -r code end < "$d/exitcode"
  if [ "$code" = 0 ]; then w=completed
  elif [ -e "$d/cancelled" ]; then w=cancelled
  else w=failed
  fi
}}
while IFS= read -r id; do
  [ -n "$id" ] || continue
  d=$root/$id; w=; code=; end=; p=; t=; start=
  if [ ! -d "$d" ]; then
    w=nodir
  else
    [ -r "$d/pid" ] && read -r p t start < "$d/pid"
    if finished; then
      :
    elif [ -n "$p" ]; then
      if st "$p" && {{ [ "$t" = - ] || [ "$ST" = "$t" ]; }}; then w=running
      elif ! finished; then
        if [ -e "$d/cancelled" ]; then w=cancelled; else w=lost; fi
      fi
    elif [ -e "$d/cancelled" ]; then
      w=cancelled
    elif [ -n "$(find "$d/{MAIN_FILE}" -mmin -{PENDING_GRACE_MINUTES} 2>/dev/null)" ]; then
      w=pending
    else
      w=nostart
    fi
  fi
  printf '%s|%s|%s|%s|%s\n' "$id" "$w" "$code" "$start" "$end"
done
"""
)

# Cancels the ids read on stdin ($1 = jobs root): TERM to each live job's process group, KILL to
# the groups still there after 5 s, then up to 3 s more for the killed processes to be gone.
CANCEL = (
    _ROOT
    + _ST
    + r"""groups=
while IFS= read -r id; do
  [ -n "$id" ] || continue
  d=$root/$id
  [ -d "$d" ] || continue
  [ -e "$d/exitcode" ] || : > "$d/cancelled"
  [ -r "$d/pid" ] || continue
  read -r p t _ < "$d/pid"
  if st "$p" && { [ "$t" = - ] || [ "$ST" = "$t" ]; }; then
    kill -TERM -- "-$p" 2>/dev/null && groups="$groups $p"
  fi
done
# settle N: wait up to N tenths of a second for the groups to have no live process left.
settle() {
  local i=0 left p alive=
  while [ -n "$groups" ] && [ "$i" -lt "$1" ]; do
    if command -v ps >/dev/null 2>&1; then
      alive=" $(ps -A -o pgid= -o stat= 2>/dev/null | awk '$2 !~ /^Z/ { printf "%s ", $1 }')"
    fi
    left=
    for p in $groups; do
      if [ -n "$alive" ]; then
        case $alive in *" $p "*) left="$left $p" ;; esac
      elif kill -0 -- "-$p" 2>/dev/null; then
        left="$left $p"
      fi
    done
    groups=$left
    [ -n "$groups" ] || break
    sleep 0.1
    i=$((i + 1))
  done
}
settle 50
for p in $groups; do kill -KILL -- "-$p" 2>/dev/null; done
settle 30
exit 0
"""
)

# find_by_token: prints "started" when the job's pid file exists ($1 = job directory).
_STARTED = (
    _ROOT
    + r"""[ -s "$root/pid" ] && echo started
exit 0
"""
)


def submit(transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
    """Write the job's files into its directory and start it detached; the token is its id.

    Submitting the same token again does not start a second copy.
    """
    directory = job_dir(token)
    if job.main_file != MAIN_FILE:
        raise GpuhubError(f"a shell job's main file must be {MAIN_FILE!r}, not {job.main_file!r}")
    for name, text in job.files.items():
        transport.put_text(f"{directory}/{name}", text, 0o755 if name == MAIN_FILE else 0o644)
    result = transport.run(["bash", "-c", LAUNCHER, "gpuhub-launch", directory], timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if not lines or not lines[-1].strip().isdigit():
        raise GpuhubError(f"starting the job in {directory} answered {result.stdout.strip()!r}, not a pid")
    return token


def find_by_token(transport: Transport, token: str, timeout: float = 60.0) -> str | None:
    """The id of the job already started with this token (its directory has a pid file), else None."""
    result = transport.run(["bash", "-c", _STARTED, "gpuhub-find", job_dir(token)], timeout=timeout)
    return token if result.stdout.strip() == "started" else None


def poll(
    transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
) -> dict[str, JobStatus]:
    """Status of every id (UNKNOWN for one that has no directory), in one command."""
    if not ids:
        return {}
    for i in ids:
        _check_id(i)
    result = transport.run(
        ["bash", "-c", POLL, "gpuhub-poll", jobs_root()], stdin="\n".join(ids) + "\n", timeout=timeout
    )
    found = parse_poll(result.stdout)
    return {i: found.get(i, JobStatus(State.UNKNOWN, reason="no answer from the status check")) for i in ids}


def cancel(transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
    """Stop the jobs (their whole process groups): TERM, then KILL after 5 s; one command."""
    if not ids:
        return
    for i in ids:
        _check_id(i)
    transport.run(["bash", "-c", CANCEL, "gpuhub-cancel", jobs_root()], stdin="\n".join(ids) + "\n", timeout=timeout)


def log_paths(scheduler_id: str, job_name: str, log_dir: str) -> tuple[str, str]:
    """Standard output and error files of a job; they live in its directory (``log_dir`` is not used).

    Under the default root they are relative to the home directory (``.gpuhub/jobs/ID/job.out``),
    like Slurm's log paths: that is where commands start over SSH, and what SFTP paths are
    relative to, so ``cat``/``tail`` and ``get_text`` all read them without any ``~`` expansion.
    """
    directory = job_dir(scheduler_id)
    if directory.startswith("~/"):
        directory = directory[2:]
    return f"{directory}/{STDOUT_FILE}", f"{directory}/{STDERR_FILE}"


def _epoch(text: str) -> float | None:
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return None


def _exit_reason(code: str) -> str:
    if not code.isdigit():
        return f"exit code {code}"
    number = int(code)
    if number > 128:
        try:
            return f"killed by {signal.Signals(number - 128).name} (exit code {number})"
        except ValueError:
            pass
    return f"exit code {number}"


_WORDS = {
    "running": (State.RUNNING, None),
    "pending": (State.PENDING, "starting"),
    "lost": (State.FAILED, "the job's process ended without recording an exit code (killed, or machine restarted)"),
    "nostart": (State.UNKNOWN, "the job directory exists but the job was never started"),
    "nodir": (State.UNKNOWN, "no job directory (never submitted to this machine, or removed)"),
}


def parse_poll(stdout: str) -> dict[str, JobStatus]:
    """Lines ``id|word|exit code|start epoch|end epoch`` (from :data:`POLL`) -> {id: status}."""
    out: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0]:
            continue
        job_id, word, code, start, end = (p.strip() for p in parts)
        if word in _WORDS:
            state, reason = _WORDS[word]
        else:
            try:
                state = State(word)
            except ValueError:
                state = State.UNKNOWN
            reason = None if state != State.UNKNOWN else f"unexpected status {word!r}"
        if state == State.FAILED and code:
            reason = _exit_reason(code)
        elif state == State.CANCELLED:
            reason = "cancelled"
        out[job_id] = JobStatus(
            state=state,
            reason=reason,
            exit_code=code or None,
            start=_epoch(start),
            end=_epoch(end) if state.finished else None,
        )
    return out
