#!/usr/bin/env bash
# Record real OAR outputs as test fixtures (tests/data/oar/), from the testbed's OAR
# (scripts/testbed/oar.sh), run as the testbed's login user exactly as gpuhub runs them.
# Each file holds one command's stdout; FILE.rc its exit code when that matters.
# Usage: bash scripts/testbed/oar-record.sh [OUT_DIR]     (about a minute)
set -euo pipefail
OUT=$(realpath -m "${1:-$(dirname "$0")/../../tests/data/oar}")
mkdir -p "$OUT"
U=(runuser -u hubuser --)
WORK=/home/hubuser/oar-record
"${U[@]}" mkdir -p "$WORK"
cd "$WORK"

as_user() { "${U[@]}" env -C "$WORK" "$@"; }
rec() {  # rec NAME CMD...: stdout to NAME, exit code to NAME.rc
  local name=$1; shift
  set +e; as_user "$@" >"$OUT/$name"; echo $? >"$OUT/$name.rc"; set -e
}
job_id() { sed -n 's/^OAR_JOB_ID=\([0-9]*\)$/\1/p' "$OUT/$1" | head -n1; }
wait_state() {  # wait_state ID STATE...
  local id=$1; shift; local i s
  for ((i = 0; i < 300; i++)); do
    s=$(as_user oarstat -s -j "$id" | sed 's/^[0-9]*: //')
    for want in "$@"; do [[ $s == "$want" ]] && return 0; done
    sleep 0.2
  done
  echo "job $id never reached $* (now $s)" >&2; return 1
}

# A 1-GPU job that runs 8 s and exits 3, and a 2-GPU job that waits for it (-a): Waiting.
cat >"$OUT/job.oar" <<'SCRIPT'
#!/bin/bash
#OAR -n rec-script
#OAR -l /nodes=1/gpu=1,walltime=0:05:00
#OAR -p gpumodel='A100'
#OAR --project physics
#OAR -O rec-%jobid%.out
#OAR -E rec-%jobid%.err
echo "running on $(hostname) as $(id -un)"
echo to-stderr >&2
sleep 8
exit 3
SCRIPT
install -m 0755 -o hubuser "$OUT/job.oar" "$WORK/job.oar"
rec oarsub_script.txt oarsub -S ./job.oar
first=$(job_id oarsub_script.txt)
rec oarsub_two_gpus.txt oarsub -l /nodes=1/gpu=2,walltime=0:02:00 -n rec-two -a "$first" \
  --project physics -O 'rec-%jobid%.out' -E 'rec-%jobid%.err' 'sleep 4'
second=$(job_id oarsub_two_gpus.txt)
wait_state "$first" Running
rec oarstat_running.json oarstat -fJ -j "$first"
rec oarstat_waiting.json oarstat -fJ -j "$second"
rec oarstat_not_full.json oarstat -J -j "$first"
rec oarstat_two.json oarstat -fJ -j "$first" -j "$second"
rec oarstat_queue.json oarstat -fJ          # every current job, as the exporter reads the queue
rec oarnodes_busy.json oarnodes -J          # resources of running jobs carry "jobs"
wait_state "$first" Terminated Error
wait_state "$second" Terminated Error
rec oarstat_terminated.json oarstat -fJ -j "$first" -j "$second"
cp "$WORK/rec-$first.out" "$OUT/job_stdout.txt"

# Cancel a running job: oardel, then oardel again (already killed), and one unknown id.
rec oarsub_json.txt oarsub -J -l /nodes=1/gpu=1,walltime=0:05:00 -n rec-cancel 'sleep 120'
third=$(sed -n 's/^OAR_JOB_ID=\([0-9]*\)$/\1/p' "$OUT/oarsub_json.txt" | head -n1)
third=${third:-$(grep -o '"job_id" *: *[0-9]*' "$OUT/oarsub_json.txt" | grep -o '[0-9]*$')}
wait_state "$third" Running
rec oardel.txt oardel "$third"
wait_state "$third" Error Terminated
rec oardel_again.txt oardel "$third"
rec oarstat_cancelled.json oarstat -fJ -j "$third"
rec oardel_unknown.txt oardel 999999

# An array of three 1-GPU jobs; idempotent type; refused requests.
rec oarsub_array.txt oarsub --array 3 -l /gpu=1,walltime=0:01:00 -n rec-array -t idempotent 'sleep 1'
array_first=$(job_id oarsub_array.txt)
array_id=$(sed -n 's/^OAR_ARRAY_ID=\([0-9]*\)$/\1/p' "$OUT/oarsub_array.txt")
for id in $(sed -n 's/^OAR_JOB_ID=\([0-9]*\)$/\1/p' "$OUT/oarsub_array.txt"); do
  wait_state "$id" Terminated Error
done
rec oarstat_array.json oarstat -fJ --array "$array_id"
rec oarsub_too_many_gpus.txt oarsub -l /nodes=1/gpu=9,walltime=0:01:00 'true'
rec oarsub_bad_property.txt oarsub -l /gpu=1 -p "gpumodel='H100'" 'true'
rec oarsub_bad_syntax.txt oarsub -l '/gpu=,walltime=x' 'true'
rec oarstat_unknown.json oarstat -fJ -j 999999
rec oarnodes.json oarnodes -J
echo "recorded in $OUT (jobs $first $second $third, array $array_id from $array_first)"

# Past its walltime, killed by a signal, held, and an idempotent job exiting 99 (resubmitted).
rec oarsub_walltime.txt oarsub -l /gpu=1,walltime=0:00:10 -n rec-walltime 'sleep 120'
w=$(job_id oarsub_walltime.txt)
rec oarsub_signal.txt oarsub -l /gpu=1,walltime=0:05:00 -n rec-signal 'kill -9 $$'
s=$(job_id oarsub_signal.txt)
rec oarsub_hold.txt oarsub --hold -l /gpu=1,walltime=0:05:00 -n rec-hold 'true'
h=$(job_id oarsub_hold.txt)
rec oarsub_idempotent.txt oarsub -t idempotent -l /gpu=1,walltime=0:05:00 -n rec-idem 'sleep 62; exit 99'
i=$(job_id oarsub_idempotent.txt)
wait_state "$s" Terminated Error
rec oarstat_hold.json oarstat -fJ -j "$h"
as_user oardel "$h" >/dev/null
wait_state "$w" Terminated Error
wait_state "$i" Terminated Error
sleep 5
rec oarstat_ends.json oarstat -fJ --sql "array_id IN ($w,$s,$h,$i) OR resubmit_job_id = $i"
as_user oardel $(as_user oarstat -J --sql "resubmit_job_id = $i" | grep -o '"Job_Id" : [0-9]*' | grep -o '[0-9]*$') >/dev/null || true
echo "recorded walltime $w, signal $s, hold $h, idempotent $i"
