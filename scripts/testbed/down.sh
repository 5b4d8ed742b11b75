#!/usr/bin/env bash
# Stop every daemon of the gpuhub testbed (packages stay installed).
# Usage: bash scripts/testbed/down.sh [--purge]
#   --purge  also cancel all jobs and delete the testbed state (database,
#            keys, spool, logs, generated /etc/slurm files) for a clean
#            start; the next up.sh rebuilds everything.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ $(id -u) -eq 0 ]] || die "down.sh must run as root"
purge=
case ${1:-} in
    --purge) purge=1 ;;
    "") ;;
    *) die "usage: down.sh [--purge]" ;;
esac

if [[ -n $purge ]] && command -v scancel >/dev/null && ctld_ok; then
    # Running job steps outlive slurmd; cancel them while slurmctld can.
    log "cancelling all jobs"
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    sleep 1
fi

# Reverse start order, so nothing logs errors about a peer gone first: OAR (oar.sh), the
# tests' PostgreSQL (postgres.sh), the second cluster (slurm2.sh), then the first one (up.sh).
log "stopping OAR";       stop_pidfile /run/oar-server.pid Almighty; stop_pidfile /run/oar-node_sshd.pid sshd
if command -v pg_ctlcluster >/dev/null; then
    for cluster in "15 main" "$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1) ${GPUHUB_PG_CLUSTER:-gpuhub}"; do
        # shellcheck disable=SC2086  # "VERSION CLUSTER", split on purpose
        if pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1, $2}' | grep -qx "$cluster"; then
            log "stopping PostgreSQL $cluster"; pg_ctlcluster $cluster stop -m fast || true
        fi
    done
fi
log "stopping the second cluster"
stop_pidfile "$TB_RUN/sshd2.pid" sshd
stop_pidfile "$TB_RUN/slurm2-d-m1.pid" slurmd
stop_pidfile "$TB_RUN/slurm2-ctld.pid" slurmctld
log "stopping sshd";      stop_pidfile "$TB_RUN/sshd.pid" sshd
for n in "${TB_NODES[@]}"; do
    log "stopping slurmd $n"; stop_pidfile "$TB_RUN/slurmd-$n.pid" slurmd
done
log "stopping slurmctld"; stop_pidfile "$TB_RUN/slurmctld.pid" slurmctld
log "stopping slurmdbd";  stop_pidfile "$TB_RUN/slurmdbd.pid" slurmdbd
log "stopping mariadbd";  stop_pidfile "$TB_MYSQL/mariadbd.pid" mariadbd
log "stopping munged";    stop_pidfile /run/munge/munged.pid munged

if [[ -n $purge ]]; then
    log "deleting $TB_STATE and generated Slurm config"
    rm -rf "$TB_STATE"
    rm -f "$SLURM_ETC/slurm.conf" "$SLURM_ETC/gres.conf" "$SLURM_ETC/slurmdbd.conf"
fi
log "testbed stopped"
