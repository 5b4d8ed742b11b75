"""The bash that runs on a lab server: probe, reserve (all or nothing), queue, walltime, release.

Everything that must be atomic happens on the host under one ``flock`` of ``LOCK_DIR/.lock``
(opened read-only, so any user may take it even in a sticky directory), by the detached job
process itself (so a queued job keeps waiting after the SSH connection is gone):

``LOCK_DIR/KEY.TOKEN``
    one file per GPU held: KEY is the GPU's UUID (``idxN`` when it has none), TOKEN the job's;
    content ``PID START EPOCH 1``: the job's process, its start time (so a reused pid is never
    taken for it) and when the GPU was taken. Owned by the job's user, who alone can remove it
    (sticky bit); a lock whose process is dead is simply ignored by everyone else, and removed
    by its owner's next gpuhub command.
``LOCK_DIR/queue/SEQ.TOKEN``
    a job waiting for GPUs (``PID START EPOCH NEED``); SEQ (nanoseconds) orders the queue.

Every value reaches these scripts as a positional argument, never spliced into their text.
"""

from __future__ import annotations

import shlex

from gpuhub.backends.shell_scripts import _ROOT, _ST, POLL

GPU_FIELDS = "index,uuid,name,memory.used,memory.total,utilization.gpu"
APP_FIELDS = "gpu_uuid,pid,used_gpu_memory"
REFUSED_EXIT = 75  # EX_TEMPFAIL: no GPUs now (or not within the wait)

# entries DIR: one line per entry file NAME.TOKEN of DIR: NAME|TOKEN|OWNER|PID|START|EPOCH|NEED|ALIVE.
# The owner is the file's, not what it says. With clean=1, this user's entries whose process is
# dead are removed instead.
_ENTRIES = r"""entries() {
  local owner f name key tok p t e n a
  set -- "$1" "$2" "$1"/*.*
  [ -e "$3" ] || return 0
  shift 2
  stat -c '%U %n' -- "$@" 2>/dev/null | while read -r owner f; do
    # Other users write here: only plain files with plain names, and never more than a line.
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    name=${f##*/}
    case $name in *[!A-Za-z0-9._-]*) continue ;; esac
    key=${name%%.*}; tok=${name#*.}
    p= t= e= n=
    { read -r -n 200 p t e n < "$f"; } 2>/dev/null
    case $p in ''|*[!0-9]*) p=0 ;; esac
    case $e in ''|*[!0-9]*) e=0 ;; esac
    case $n in ''|*[!0-9]*) n=1 ;; esac
    t=${t//[!A-Za-z0-9:-]/}
    a=0
    if [ "$p" -gt 0 ] && st "$p" && [ "$ST" = "$t" ]; then a=1; fi
    if [ "$a" = 0 ] && [ "$clean" = 1 ] && [ -O "$f" ]; then rm -f -- "$f"; continue; fi
    printf '%s|%s|%s|%s|%s|%s|%s|%s\n' "$key" "$tok" "$owner" "$p" "${t:--}" "$e" "$n" "$a"
  done
}
"""

# probe NVIDIA_SMI LOCK_DIR CLEAN: the host as sections (parsed by discovery.parse_probe).
_PROBE_FN = (
    _ENTRIES
    + rf"""probe() {{
  local out rc pids u p m gpus
  if ! command -v -- "$1" >/dev/null 2>&1; then echo "#error no-nvidia-smi"; return 0; fi
  clean=$3
  # Both queries at once (each can take a second or more on a loaded host): the GPU list and its
  # exit status come through a pipe, read once the processes are in (the pipe holds far more
  # than a GPU list; were it ever full, the query would only wait for the read).
  exec {{gpus}}< <("$1" --query-gpu={GPU_FIELDS} --format=csv,noheader,nounits 2>&1; echo "#rc $?")
  out=$("$1" --query-compute-apps={APP_FIELDS} --format=csv,noheader,nounits 2>&1); rc=$?
  echo "#gpus"
  cat <&"$gpus"
  exec {{gpus}}<&-
  echo "#apps"
  [ -n "$out" ] && printf '%s\n' "$out"
  echo "#rc $rc"
  echo "#owners"
  pids=
  while IFS=', ' read -r u p m; do
    case $p in ''|*[!0-9]*) ;; *) pids=$pids${{pids:+,}}$p ;; esac
  done <<< "$out"
  if [ -n "$pids" ]; then
    ps -o pid= -o user:32= -p "$pids" 2>/dev/null || ps -o pid= -o user= -p "$pids" 2>/dev/null
  fi
  echo "#locks"
  entries "$2"
  echo "#queue"
  entries "$2/queue"
  printf '#now %(%s)T\n' -1
}}
"""
)

# lockdir_ready DIR: the shared lock directory and its queue exist, world-writable with the
# sticky bit, and DIR/.lock is readable by all; otherwise sets WHY and fails.
_LOCKDIR_FN = r"""lockdir_ready() {
  local d
  for d in "$1" "$1/queue"; do
    [ -k "$d" ] && [ -w "$d" ] && continue
    [ -d "$d" ] || (umask 0; mkdir -p -m 1777 -- "$d") 2>/dev/null
    [ -d "$d" ] || { WHY="cannot create the lock directory $d"; return 1; }
    [ -O "$d" ] && chmod 1777 -- "$d" 2>/dev/null
    if [ ! -k "$d" ] || [ ! -w "$d" ]; then
      WHY="the lock directory $d must be world-writable with the sticky bit (chmod 1777 $d)"; return 1
    fi
  done
  [ -e "$1/.lock" ] || (umask 0; : >> "$1/.lock") 2>/dev/null
  [ -r "$1/.lock" ] || { WHY="cannot read $1/.lock (it must be readable by all: chmod 666)"; return 1; }
}
"""

# Reads a probe on stdin, prints one verdict: "take IDX,IDX KEY,KEY", "wait REASON" (not now,
# maybe later) or "never REASON". Variables: need, me, token, reserved (indices, comma-separated),
# memmax (MiB), utilmax (%), maxper (GPUs per user, 0 = no limit); show=1 first prints "gpu IDX STATE".
DECIDE = r"""
function num(v) { return v ~ /^[0-9]+(\.[0-9]+)?$/ }
function bad(v) { return v ~ /^\[/ && v != "[N/A]" && v != "[Not Supported]" }
BEGIN { n = split(reserved, r, ","); for (i = 1; i <= n; i++) if (r[i] != "") res[r[i]] = 1 }
/^#/ { if ($1 != "#rc") sec = substr($1, 2); next }
sec == "gpus" {
  k = split($0, f, ", "); if (k < 6 || f[1] !~ /^[0-9]+$/) next
  g++; idx[g] = f[1]; uuid[g] = f[2]; mem[g] = f[4]; util[g] = f[6]
  key[g] = f[2] ~ /^(GPU|MIG)-[A-Za-z0-9-]+$/ ? f[2] : "idx" f[1]
  broken[g] = bad(f[2]) || bad(f[4]) || bad(f[5]) || bad(f[6])
  next
}
sec == "apps" { k = split($0, f, ", "); if (k >= 2 && f[2] ~ /^[0-9]+$/) apps[f[1]]++; next }
sec == "locks" {
  split($0, f, "|"); if (f[8] != 1) next
  held[f[1]] = 1; if (!(f[2] in jobuser)) jobuser[f[2]] = f[3]; holds[f[3]]++; next
}
sec == "queue" {
  split($0, f, "|"); if (f[8] != 1) next
  q++; qtok[q] = f[2]; quser[q] = f[3]; qneed[q] = f[7]; next
}
END {
  usable = 0; nfree = 0; nres = 0
  for (i = 1; i <= g; i++) {
    if (broken[i]) st = "unavailable"
    else if (key[i] in held) st = "held"
    else if (idx[i] in res) st = "reserved"
    else if ((uuid[i] in apps) || (num(mem[i]) && mem[i] + 0 > memmax + 0) ||
             (num(util[i]) && util[i] + 0 > utilmax + 0)) st = "foreign"
    else st = "free"
    if (show) print "gpu " idx[i] " " st
    if (st == "reserved") nres++
    if (st != "unavailable" && st != "reserved") usable++
    if (st == "free") { nfree++; fidx[nfree] = idx[i]; fkey[nfree] = key[i] }
  }
  if (need + 0 > usable) {
    printf "never %d GPU(s) asked, but this host has %d GPU(s) gpuhub may hand out", need, usable
    if (nres) printf " (%d more reserved by the site)", nres
    print ""; exit
  }
  if (maxper + 0 > 0 && need + 0 > maxper + 0) {
    printf "never %d GPU(s) asked; the site allows %d per user\n", need, maxper; exit
  }
  if (maxper + 0 > 0 && holds[me] + need > maxper + 0) {
    printf "wait you already hold %d GPU(s) here and the site allows %d per user\n", holds[me], maxper; exit
  }
  avail = nfree; ahead = 0; aneed = 0
  for (j = 1; j <= q; j++) {
    if (qtok[j] == token) break
    if (maxper + 0 > 0 && holds[quser[j]] + qneed[j] > maxper + 0) continue
    avail -= qneed[j]; ahead++; aneed += qneed[j]
  }
  if (avail >= need + 0) {
    out = "take "
    for (i = 1; i <= need; i++) out = out (i > 1 ? "," : "") fidx[i]
    out = out " "
    for (i = 1; i <= need; i++) out = out (i > 1 ? "," : "") fkey[i]
    print out; exit
  }
  printf "wait %d GPU(s) asked, %d of %d free", need, nfree, usable
  if (ahead) printf ", %d job(s) queued ahead need %d", ahead, aneed
  print ""
}
"""

# The detached job. Arguments: DIR TOKEN NEED LOCK_DIR NVIDIA_SMI RESERVED MEMMAX UTILMAX MAXPER
# WAIT (-1: refuse when no GPUs, 0: wait forever, N: wait N s) WALL (s, 0 = none) GRACE POLL.
# Files it leaves in DIR: pid, then queued (why it waits) or refused (why not, then the probe),
# gpus (IDX,.. KEY,.. EPOCH once it holds them), timedout, and exitcode last.
_WRAPPER = (
    _ST
    + _PROBE_FN
    + _LOCKDIR_FN
    + rf"""decide={shlex.quote(DECIDE)}
cd -- "$1" || exit 1
trap : TERM
st $$ || ST=-
printf '%s %s %(%s)T\n' "$$" "$ST" -1 > pid.tmp && mv -f pid.tmp pid
token=$2 need=$3 dir=$4 smi=$5 reserved=$6 memmax=$7 utilmax=$8 maxper=$9 wait=${{10}} wall=${{11}} grace=${{12}}
poll=${{13}}
snap=
[ "$need" -gt 0 ] && printf '%s\n' "$dir" > lockdir
finish() {{
  rm -f -- "$dir"/*."$token" "$dir/queue"/*."$token" 2>/dev/null
  printf '%s %(%s)T\n' "$1" -1 > exitcode.tmp && mv -f exitcode.tmp exitcode
  exit 0
}}
refuse() {{
  {{ printf '%s\n' "$1"; if [ -n "$snap" ]; then cat probe.out; fi; }} > refused.tmp
  mv -f refused.tmp refused
  finish {REFUSED_EXIT}
}}
export CUDA_VISIBLE_DEVICES= CUDA_DEVICE_ORDER=PCI_BUS_ID
if [ "$need" -gt 0 ]; then
  lockdir_ready "$dir" || refuse "$WHY"
  me=${{USER:-$(id -un)}}; queued=; printf -v since '%(%s)T' -1
  # Closing fd 9 releases the lock: the job never inherits it.
  unlock() {{ exec 9<&-; }}
  while :; do
    [ -e cancelled ] && finish 143
    exec 9< "$dir/.lock" || refuse "cannot open $dir/.lock"
    flock -w 60 9 || refuse "the lock $dir/.lock stayed taken for 60 s"
    probe "$smi" "$dir" 1 > probe.out
    read -r first < probe.out
    case $first in
      "#error no-nvidia-smi"*) unlock; snap=; refuse "no nvidia-smi on this host (looked for $smi)" ;;
    esac
    snap=1
    verdict=$(awk -v need="$need" -v me="$me" -v token="$token" -v reserved="$reserved" \
      -v memmax="$memmax" -v utilmax="$utilmax" -v maxper="$maxper" "$decide" probe.out)
    printf -v now '%(%s)T' -1
    case $verdict in
      "take "*)
        set -f; set -- $verdict; set +f
        ids=$2 keys=$3
        for k in ${{keys//,/ }}; do printf '%s %s %s 1\n' "$$" "$ST" "$now" > "$dir/$k.$token"; done
        [ -n "$queued" ] && rm -f -- "$dir/queue/$queued.$token"
        unlock
        printf '%s %s %s\n' "$ids" "$keys" "$now" > gpus.tmp && mv -f gpus.tmp gpus
        export CUDA_VISIBLE_DEVICES=$ids GPUHUB_GPU_UUIDS=$keys
        break ;;
      "never "*) unlock; refuse "${{verdict#never }}" ;;
    esac
    reason=${{verdict#wait }}
    [ "$wait" -lt 0 ] && {{ unlock; refuse "$reason"; }}
    if [ -z "$queued" ]; then
      queued=${{EPOCHREALTIME/[.,]/}}000
      [ "$queued" = 000 ] && queued=$(date +%s%N)
      printf '%s %s %s %s\n' "$$" "$ST" "$now" "$need" > "$dir/queue/$queued.$token"
    fi
    unlock
    printf '%s\n' "$reason" > queued.tmp && mv -f queued.tmp queued
    if [ "$wait" -gt 0 ] && [ $((now - since)) -gt "$wait" ]; then
      snap=; refuse "no GPUs within the $wait s wait: $reason"
    fi
    sleep "$poll"
  done
fi
[ -e cancelled ] && finish 143
printf -v begin '%(%s)T' -1
if [ "$wall" -gt 0 ]; then
  timeout -s TERM -k "$grace" "$wall" bash job.sh > job.out 2> job.err
  rc=$?
  printf -v end '%(%s)T' -1
  if [ $((end - begin)) -ge "$wall" ] && [ ! -e cancelled ]; then : > timedout; fi
else
  bash job.sh > job.out 2> job.err
  rc=$?
fi
finish "$rc"
"""
)

# Writes the job script read on stdin into the job directory ($1, made if needed) and starts
# the job once (the wrapper's other arguments follow $1); then reports:
# "#started" + the gpus file, "#queued" + why, "#refused" + why and the probe, or "#ended".
LAUNCHER = (
    _ROOT
    + rf"""d=$root; shift
mkdir -p -- "$d" && cd -- "$d" || {{ echo "gpuhub: cannot make the job directory $d" >&2; exit 1; }}
if [ ! -e launch.lock ]; then
  umask 077
  cat > job.sh.tmp && chmod 700 job.sh.tmp && mv -f job.sh.tmp job.sh || exit 1
  umask 022
fi
if [ "$2" -gt 0 ] && ! command -v flock >/dev/null 2>&1; then
  echo "gpuhub: flock (util-linux) is missing on this host: it is needed to share GPUs" >&2; exit 1
fi
wrapper={shlex.quote(_WRAPPER)}
if mkdir launch.lock 2>/dev/null; then
  if setsid -f true </dev/null >/dev/null 2>&1; then
    setsid -f bash -c "$wrapper" gpuhub-job "$d" "$@" </dev/null >/dev/null 2>&1
  else
    setsid bash -c "$wrapper" gpuhub-job "$d" "$@" </dev/null >/dev/null 2>&1 &
  fi
fi
i=0
until [ -s pid ] && {{ [ -e gpus ] || [ -e queued ] || [ -e exitcode ]; }}; do
  i=$((i + 1))
  [ "$i" -le 3000 ] || {{ echo "gpuhub: the job in $d did not start (no GPU decision after 90 s)" >&2; exit 1; }}
  if [ "$i" -le 100 ]; then sleep 0.01; else sleep 0.05; fi
done
if [ -e gpus ]; then echo "#started"; cat gpus
elif [ -e refused ]; then echo "#refused"; cat refused
elif [ -e queued ]; then echo "#queued"; cat queued
else echo "#ended"; cat exitcode
fi
"""
)

# One command: the probe of $1 = nvidia-smi, $2 = lock directory (this user's dead entries cleaned).
PROBE = _ST + _PROBE_FN + 'probe "$1" "$2" 1\n'

# Extra status of the ids read on stdin ($1 = jobs root): ID|WORD|DETAIL|GPUS_EPOCH where WORD is
# queued (DETAIL = why), refused (DETAIL = why), timedout, gpus (DETAIL = indices), nogpus (a GPU
# job that never got its GPUs) or none.
EXTRA = (
    _ROOT
    + r"""while IFS= read -r id; do
  [ -n "$id" ] || continue
  d=$root/$id; w=none; x=; e=
  if [ -e "$d/gpus" ]; then read -r x _ e < "$d/gpus"; w=gpus; fi
  if [ -e "$d/refused" ]; then w=refused; read -r x < "$d/refused"
  elif [ -e "$d/timedout" ]; then w=timedout
  elif [ ! -e "$d/gpus" ] && [ -e "$d/queued" ] && [ ! -e "$d/exitcode" ]; then w=queued; read -r x < "$d/queued"
  elif [ ! -e "$d/gpus" ] && [ -e "$d/lockdir" ]; then w=nogpus
  fi
  printf '%s|%s|%s|%s\n' "$id" "$w" "${x//|/ }" "$e"
done
"""
)

# Cancels the ids read on stdin ($1 = jobs root): TERM to every process of each job's session
# (the job may have made process groups of its own), KILL to what is left after 5 s, then the
# job's locks and queue entry are removed (from the lock directory named in its "lockdir").
CANCEL = (
    _ROOT
    + _ST
    + r"""sids=; tokens=
while IFS= read -r id; do
  [ -n "$id" ] || continue
  d=$root/$id
  [ -d "$d" ] || continue
  tokens="$tokens $id"
  [ -e "$d/exitcode" ] || : > "$d/cancelled"
  [ -r "$d/pid" ] || continue
  read -r p t _ < "$d/pid"
  if st "$p" && { [ "$t" = - ] || [ "$ST" = "$t" ]; }; then sids="$sids $p"; fi
done
members() {
  ps -A -o pid= -o sid= -o stat= 2>/dev/null | awk -v s=" $sids " 'index(s, " " $2 " ") && $3 !~ /^Z/ { print $1 }'
}
signal() { local p; for p in $(members); do kill "-$1" "$p" 2>/dev/null; done; }
if [ -n "$sids" ]; then
  signal TERM
  i=0
  while [ -n "$(members)" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  signal KILL
  i=0
  while [ -n "$(members)" ] && [ "$i" -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
fi
for id in $tokens; do
  dir=
  [ -r "$root/$id/lockdir" ] && read -r dir < "$root/$id/lockdir"
  [ -n "$dir" ] && rm -f -- "$dir"/*."$id" "$dir/queue"/*."$id" 2>/dev/null
done
exit 0
"""
)

assert POLL.startswith(_ROOT + _ST), "STATUS below reuses the body of the shell backend's POLL"

# Status of the ids read on stdin ($1 = jobs root), in one command: the shell backend's lines
# (id|word|exit code|start|end), "#extra", then EXTRA's lines for the same ids.
STATUS = (
    _ROOT
    + _ST
    + "shell_poll() {\n"
    + POLL[len(_ROOT + _ST) :]
    + "}\nextra() {\n"
    + EXTRA[len(_ROOT) :]
    + "}\n"
    + r"""ids=$(cat)
printf '%s\n' "$ids" | shell_poll
echo "#extra"
printf '%s\n' "$ids" | extra
"""
)
