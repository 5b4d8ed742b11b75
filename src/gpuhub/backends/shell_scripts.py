"""The bash snippets the ``ssh``/``local`` backend runs on the machine that runs the jobs.

Each reads its job directory or jobs root as ``$1`` (never expanded by a shell) and, when it
handles many jobs, their ids on standard input: one command per operation, whatever the count.
"""

from __future__ import annotations

import shlex

from gpuhub.backends.capabilities import KILL_AFTER

MAIN_FILE = "job.sh"
STDOUT_FILE = "job.out"
STDERR_FILE = "job.err"
PENDING_GRACE_MINUTES = 2  # a directory without a pid this young is a job still starting

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


# The detached job ($1 = its directory, $2 = its time limit in seconds or empty, $3 = seconds
# from TERM to KILL at the limit). It records its own pid ($$ is the session and process group
# leader after setsid), then runs the script; TERM is trapped here only so that, once the
# script has died of it, the exit status is still recorded.
# With a time limit, a watchdog in the same process group sends TERM to the whole job at the
# limit (leaving the marker `timedout`), then KILL to whatever is left of it $3 s later (children
# that ignore TERM included), as a scheduler does.
_WRAPPER = (
    _ST
    + rf"""cd -- "$1" || exit 1
limit=$2 grace=${{3:-{KILL_AFTER}}}
trap : TERM
st $$ || ST=-
printf '%s %s %s\n' "$$" "$ST" "$(date +%s)" > pid.tmp && mv -f pid.tmp pid
watchdog() {{
  trap '' TERM
  trap 'kill -KILL "$s" 2>/dev/null; exit 0' USR1
  sleep "$1" & s=$!; wait "$s"
  [ -e exitcode ] && exit 0
  trap '' USR1
  : > timedout
  kill -TERM -- "-$$"
  sleep "$grace" & s=$!; wait "$s"
  [ -e exitcode ] || {{ printf '%s %s\n' 137 "$(date +%s)" > exitcode.tmp && mv -f exitcode.tmp exitcode; }}
  kill -KILL -- "-$$"
}}
if [ -e cancelled ]; then
  rc=143
else
  w=
  case $limit in ""|*[!0-9]*) ;; *) watchdog "$limit" & w=$! ;; esac
  bash {MAIN_FILE} > {STDOUT_FILE} 2> {STDERR_FILE}
  rc=$?
  [ -z "$w" ] || kill -USR1 "$w" 2>/dev/null
fi
printf '%s %s\n' "$rc" "$(date +%s)" > exitcode.tmp && mv -f exitcode.tmp exitcode
"""
)

# Starts the job once ($1 = job directory, $2 = time limit in seconds or empty, $3 = seconds from
# TERM to KILL at the limit) and prints its pid.
LAUNCHER = (
    _ROOT
    + rf"""d=$root
limit=${{2-}} grace=${{3:-{KILL_AFTER}}}
cd -- "$d" 2>/dev/null || {{ echo "gpuhub: no job directory $d" >&2; exit 1; }}
[ -f {MAIN_FILE} ] || {{ echo "gpuhub: $d/{MAIN_FILE} is missing" >&2; exit 1; }}
wrapper={shlex.quote(_WRAPPER)}
if mkdir launch.lock 2>/dev/null; then
  # setsid -f forks by itself: no '&', so the job does not start with SIGINT ignored
  if setsid -f true </dev/null >/dev/null 2>&1; then
    setsid -f nohup bash -c "$wrapper" gpuhub-job "$d" "$limit" "$grace" </dev/null >/dev/null 2>&1
  elif command -v setsid >/dev/null 2>&1; then
    setsid nohup bash -c "$wrapper" gpuhub-job "$d" "$limit" "$grace" </dev/null >/dev/null 2>&1 &
  elif command -v perl >/dev/null 2>&1; then
    nohup perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or exit 127' \
      bash -c "$wrapper" gpuhub-job "$d" "$limit" "$grace" </dev/null >/dev/null 2>&1 &
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
  if [ -e "$d/cancelled" ] && [ "$code" != 0 ]; then w=cancelled
  elif [ -e "$d/timedout" ]; then w=timeout
  elif [ "$code" = 0 ]; then w=completed
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

# Prints the ids read on stdin whose job has started (its pid file exists) ($1 = jobs root).
STARTED = (
    _ROOT
    + r"""while IFS= read -r id; do
  [ -n "$id" ] && [ -s "$root/$id/pid" ] && printf '%s\n' "$id"
done
exit 0
"""
)
