#!/usr/bin/env bash
# Print the health of the gpuhub testbed; exit 1 if any part is unhealthy.
# Usage: bash scripts/testbed/status.sh
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

bad=0
check() {   # check LABEL CMD...
    local label=$1; shift
    if "$@"; then
        printf '  %-28s ok\n' "$label"
    else
        printf '  %-28s FAILED\n' "$label"
        bad=1
    fi
}
have() { command -v "$1" >/dev/null 2>&1; }

if ! have sinfo || ! have sacctmgr || ! have munge; then
    echo "testbed: Slurm/munge not installed (run scripts/testbed/up.sh)"
    exit 1
fi

skip() { printf '  %-28s FAILED (%s)\n' "$1" "$2"; bad=1; }

# Client commands block for MessageTimeout retrying a dead daemon, so probes
# that depend on one are skipped when it is down.
echo "== daemons"
check munged munge_ok
check "mariadbd (:$TB_DB_PORT)" mysql_ok
dbd_ok && dbd_up=1 || dbd_up=0
check slurmdbd test "$dbd_up" = 1
ctld_ok && ctld_up=1 || ctld_up=0
check slurmctld test "$ctld_up" = 1
for n in "${TB_NODES[@]}"; do
    check "slurmd $n" pid_alive "$TB_RUN/slurmd-$n.pid" slurmd
    if ((ctld_up)); then
        check "node $n usable ($(node_state "$n"))" node_ok "$n"
    else
        skip "node $n usable" "slurmctld down"
    fi
done
if pid_alive "$TB_RUN/sshd.pid" sshd; then
    check "sshd (:$TB_SSH_PORT) as $TB_SSH_USER" sshd_ok
    check "ssh root login" ssh_cmd root@127.0.0.1 true
    if ((ctld_up && dbd_up)); then
        check "Slurm commands over ssh" ssh_cmd "$TB_SSH_USER@127.0.0.1" \
            'squeue -h >/dev/null && sacct -n -X -S now >/dev/null'
    fi
else
    skip "sshd (:$TB_SSH_PORT)" "not running"
fi
check "testbed.env" test -s "$TB_ENV_FILE"

if ((ctld_up)); then
    echo "== sinfo"
    sinfo -o '%P %a %l %D %T %N %G %f' 2>&1 | sed 's/^/  /'
    echo "== licenses"
    scontrol show licenses -o 2>&1 | sed 's/^/  /'
fi
if ((dbd_up)); then
    echo "== sacctmgr list qos"
    sacctmgr -n -P list qos format=name,maxwall,flags 2>&1 | sed 's/^/  /'
    echo "== sacctmgr list assoc (user $TB_SSH_USER)"
    sacctmgr -n -P list assoc where user="$TB_SSH_USER" format=account,user,qos,defaultqos 2>&1 \
        | sed 's/^/  /'
fi

if ((bad)); then
    echo "testbed: UNHEALTHY (logs in $TB_LOG)"
    exit 1
fi
echo "testbed: healthy"
