#!/usr/bin/env bash
# Install (Debian packages) and start the gpuhub testbed: a real Slurm
# cluster on loopback (slurmctld, two slurmd "n1"/"n2" with fake typed GPUs,
# slurmdbd on a private MariaDB, munge) plus an sshd "login node" on
# 127.0.0.1:2222. Idempotent: every step checks before it acts, so a second
# run against a healthy testbed changes nothing and takes a few seconds.
# The generated Slurm config follows site_configs/*.yaml; re-run after
# changing them and the daemons that need it are restarted.
#
# Usage: bash scripts/testbed/up.sh        (as root)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

trap 'printf "[testbed] ERROR: up.sh failed at line %s (exit %s)\n" "$LINENO" "$?" >&2' ERR

[[ $(id -u) -eq 0 ]] || die "up.sh must run as root"
T0=$SECONDS
HOST=$(hostname -s 2>/dev/null || hostname)

# install_if_changed SRC DEST MODE OWNER: copy only when the content differs
# (mtime-preserving no-op otherwise); returns 0 when DEST was (re)written.
install_if_changed() {
    local src=$1 dest=$2 mode=$3 owner=$4
    if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"; chown "$owner" "$dest"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest"
    return 0
}

# ---------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------
PACKAGES=(slurm-wlm slurmctld slurmd slurmdbd slurm-client munge
          mariadb-server mariadb-client openssh-server openssh-client
          python3-yaml)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing packages: ${missing[*]}"
    # Keep the packages' init scripts from starting system-wide daemons on
    # the default ports: this script starts its own instances.
    created_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt_log=$(mktemp /tmp/gpuhub-testbed-apt.XXXXXX)
    ok=
    for attempt in 1 2 3; do   # mirrors occasionally fail transiently
        if { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
                >>"$apt_log" 2>&1; then
            ok=1; break
        fi
        warn "apt-get failed (attempt $attempt), retrying"
        sleep 5
    done
    if [[ -z $ok ]]; then
        [[ -n $created_policy ]] && rm -f /usr/sbin/policy-rc.d
        die "apt-get install failed" "$apt_log"
    fi
    [[ -n $created_policy ]] && rm -f /usr/sbin/policy-rc.d
    rm -f "$apt_log"
    log "packages installed ($((SECONDS - T0)) s)"
else
    log "packages: already installed"
fi

# ---------------------------------------------------------------------------
# 2. Users, directories, name resolution
# ---------------------------------------------------------------------------
ensure_login_user "$TB_SSH_USER"
HUB_HOME=$(getent passwd "$TB_SSH_USER" | cut -d: -f6)

mkdir -p "$TB_STATE" "$TB_LOG" "$TB_RUN" "$TB_SSH" "$SLURM_ETC" \
         "$TB_STATE/slurm/ctld"
for n in "${TB_NODES[@]}"; do mkdir -p "$TB_STATE/slurm/d-$n"; done
chmod 755 "$TB_STATE" "$TB_LOG" "$TB_RUN" "$TB_SSH"

# The node names must resolve to loopback: Slurm itself uses NodeAddr, but
# jobs (e.g. a torch.distributed rendezvous on $SLURM_NODELIST) use names.
for name in "${TB_NODES[@]}" "$HOST"; do
    if [[ $(getent hosts "$name" | awk '{print $1; exit}') != 127.0.0.1 ]]; then
        log "adding '$name' to /etc/hosts"
        # never glue our line onto a last line lacking its newline
        [[ -s /etc/hosts && -n $(tail -c1 /etc/hosts) ]] && echo >>/etc/hosts
        printf '127.0.0.1\t%s\t# gpuhub-testbed\n' "$name" >>/etc/hosts
    fi
done

# ---------------------------------------------------------------------------
# 3. Slurm configuration (generated from site_configs/*.yaml)
# ---------------------------------------------------------------------------
GEN=$(mktemp -d /tmp/gpuhub-testbed-conf.XXXXXX)
trap 'rm -rf "$GEN"' EXIT
# GPUHUB_TESTBED_SITE_DIR: try the testbed against another set of site
# configs (default: the repository's).
/usr/bin/python3 "$HERE/gen_conf.py" \
    --site-dir "${GPUHUB_TESTBED_SITE_DIR:-$REPO/site_configs}" \
    --accounts "$HERE/accounts.yaml" --hostname "$HOST" \
    --state-dir "$TB_STATE" --out-dir "$GEN"
# shellcheck source=/dev/null
source "$GEN/plan.env"

SLURM_CONF_CHANGED=
install_if_changed "$GEN/slurm.conf" "$SLURM_ETC/slurm.conf" 644 root:root \
    && SLURM_CONF_CHANGED=1
install_if_changed "$GEN/gres.conf" "$SLURM_ETC/gres.conf" 644 root:root \
    && SLURM_CONF_CHANGED=1
[[ -n $SLURM_CONF_CHANGED ]] && log "slurm.conf/gres.conf written (sites: ${PLAN_SITES:-none})"

# The fake GPU devices named in gres.conf. Character device nodes with the
# NVIDIA major number (195, no driver behind it: opening them fails) make
# slurmd accept them as GPUs and export CUDA_VISIBLE_DEVICES to jobs; with
# plain files GPUs are still counted and allocated, but slurmd logs "not a
# valid character or block device" and jobs get no CUDA_VISIBLE_DEVICES.
# Plain files are the fallback where mknod is not permitted.
for f in $PLAN_GPU_FILES; do
    [[ -c $f ]] && continue
    mkdir -p "$(dirname "$f")"
    minor=${f##*nvidia}
    rm -f "$f"
    if ! mknod -m 666 "$f" c 195 "$minor" 2>/dev/null; then
        [[ -n ${warned_mknod:-} ]] || warn "mknod not permitted: fake GPUs are plain files (no CUDA_VISIBLE_DEVICES in jobs)"
        warned_mknod=1
        : >"$f"
        continue
    fi
    SLURM_CONF_CHANGED=1   # slurmd reads the devices at start only
done

cat >"$GEN/slurmdbd.conf" <<EOF
# Generated by scripts/testbed/up.sh -- do not edit by hand.
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$TB_LOG/slurmdbd.log
PidFile=$TB_RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$TB_DB_PORT
StorageUser=$TB_DB_USER
StoragePass=$TB_DB_PASS
StorageLoc=$TB_DB_NAME
EOF
DBD_CONF_CHANGED=
# slurmdbd refuses a config readable by others (it holds the DB password).
install_if_changed "$GEN/slurmdbd.conf" "$SLURM_ETC/slurmdbd.conf" 600 root:root \
    && DBD_CONF_CHANGED=1

# ---------------------------------------------------------------------------
# 4. munge
# ---------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
[[ -e /var/log/munge/munged.log ]] && chown munge:munge /var/log/munge/munged.log
chmod 600 /etc/munge/munge.key
chmod 755 /run/munge
if munge_ok; then
    log "munged: running"
else
    log "starting munged"
    # --force: take over a stale socket left by a daemon that died.
    # munged insists on owning its log file, so its stderr goes elsewhere.
    "${TB_DAEMON_ENV[@]}" runuser -u munge -- /usr/sbin/munged --force \
        </dev/null >>"$TB_LOG/munged.out" 2>&1 \
        || die "munged failed to start" "$TB_LOG/munged.out" /var/log/munge/munged.log
    wait_until 15 munge_ok || die "munge does not answer" /var/log/munge/munged.log
fi

# ---------------------------------------------------------------------------
# 5. MariaDB (private instance for slurmdbd)
# ---------------------------------------------------------------------------
mkdir -p "$TB_MYSQL"
chown mysql:mysql "$TB_MYSQL"
if [[ ! -d $TB_MYSQL/data/mysql ]]; then
    log "initialising MariaDB data directory"
    rm -rf "$TB_MYSQL/data" "$TB_MYSQL/.slurm-db-ready"
    mariadb-install-db --no-defaults --user=mysql --datadir="$TB_MYSQL/data" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$TB_LOG/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed" "$TB_LOG/mariadb-install.log"
fi
if mysql_ok; then
    log "mariadbd: running"
else
    log "starting mariadbd (127.0.0.1:$TB_DB_PORT)"
    # --no-defaults: ignore /etc/mysql so a system instance's settings
    # (datadir, socket, port) never leak in. Buffer pool and lock wait
    # timeout as slurmdbd recommends (it logs an error otherwise); the pool
    # is only reserved, not used, by this small database.
    setsid "${TB_DAEMON_ENV[@]}" /usr/sbin/mariadbd --no-defaults --user=mysql \
        --datadir="$TB_MYSQL/data" --socket="$TB_DB_SOCK" \
        --pid-file="$TB_MYSQL/mariadbd.pid" --port="$TB_DB_PORT" \
        --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$TB_LOG/mariadb.log" \
        --innodb-lock-wait-timeout=900 --innodb-flush-log-at-trx-commit=2 \
        --innodb-buffer-pool-size=1G \
        </dev/null >>"$TB_LOG/mariadb.log" 2>&1 &
    wait_until 60 mysql_ok || die "mariadbd did not start" "$TB_LOG/mariadb.log"
fi
if [[ ! -e $TB_MYSQL/.slurm-db-ready ]]; then
    log "creating Slurm accounting database"
    # --skip-name-resolve: TCP clients are matched on 127.0.0.1, not localhost.
    mariadb --no-defaults --socket="$TB_DB_SOCK" -uroot <<EOF
CREATE DATABASE IF NOT EXISTS \`$TB_DB_NAME\`;
CREATE USER IF NOT EXISTS '$TB_DB_USER'@'127.0.0.1' IDENTIFIED BY '$TB_DB_PASS';
CREATE USER IF NOT EXISTS '$TB_DB_USER'@'localhost' IDENTIFIED BY '$TB_DB_PASS';
GRANT ALL ON \`$TB_DB_NAME\`.* TO '$TB_DB_USER'@'127.0.0.1';
GRANT ALL ON \`$TB_DB_NAME\`.* TO '$TB_DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
    touch "$TB_MYSQL/.slurm-db-ready"
fi

# ---------------------------------------------------------------------------
# 6. slurmdbd + accounting objects
# ---------------------------------------------------------------------------
if [[ -n $DBD_CONF_CHANGED ]] && pid_alive "$TB_RUN/slurmdbd.pid" slurmdbd; then
    log "slurmdbd.conf changed: restarting slurmdbd"
    stop_pidfile "$TB_RUN/slurmdbd.pid" slurmdbd
fi
if pid_alive "$TB_RUN/slurmdbd.pid" slurmdbd && dbd_ok; then
    log "slurmdbd: running"
else
    log "starting slurmdbd"
    "${TB_DAEMON_ENV[@]}" /usr/sbin/slurmdbd </dev/null >>"$TB_LOG/slurmdbd.log" 2>&1 \
        || die "slurmdbd failed to start" "$TB_LOG/slurmdbd.log"
    # The first start creates the schema: allow it some time.
    wait_until 90 dbd_ok || die "slurmdbd does not answer" "$TB_LOG/slurmdbd.log"
fi

SACCT_LOG=$TB_LOG/sacctmgr.log
sacctmgr_do() {
    # sacctmgr -i: no confirmation prompt; logged for post-mortems.
    printf '+ sacctmgr -i %s\n' "$*" >>"$SACCT_LOG"
    sacctmgr -i "$@" >>"$SACCT_LOG" 2>&1 || die "sacctmgr $* failed" "$SACCT_LOG"
}
# normalise a time limit for comparison: "0-02:00:00" == "02:00:00"
norm_time() { local t=${1#0-}; echo "${t:-none}"; }
csv_sort() { tr ',' '\n' <<<"$1" | sed '/^$/d' | sort -u | paste -sd, -; }

if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$TB_CLUSTER"; then
    log "registering cluster $TB_CLUSTER"
    sacctmgr_do add cluster "$TB_CLUSTER"
fi

# QoS: create missing ones, fix MaxWall of existing ones. DenyOnLimit makes
# a job over the QoS limits fail at submission instead of pending forever.
declare -A have_wall=()
while IFS='|' read -r name wall; do
    [[ -n $name ]] && have_wall[$name]=$(norm_time "$wall")
done < <(sacctmgr -n -P list qos format=name,maxwall)
qos_names=()
for pair in $PLAN_QOS; do
    name=${pair%%=*}; wall=${pair#*=}
    qos_names+=("$name")
    want=$(norm_time "$wall")
    if [[ -z ${have_wall[$name]+x} ]]; then
        log "adding QoS $name (MaxWall ${wall:-none})"
        sacctmgr_do add qos "$name" ${wall:+MaxWall=$wall} Flags=DenyOnLimit
    elif [[ ${have_wall[$name]} != "$want" ]]; then
        log "setting QoS $name MaxWall ${wall:-none}"
        sacctmgr_do modify qos where name="$name" set MaxWall="${wall:--1}" Flags=DenyOnLimit
    fi
done
QOS_CSV=$(csv_sort "$(IFS=,; echo "${qos_names[*]}")")

have_accounts=$(sacctmgr -n -P list account format=account)
new_accounts=()
# shellcheck disable=SC2153  # PLAN_* come from plan.env
IFS=, read -r -a plan_accounts <<<"$PLAN_ACCOUNTS"
for a in "${plan_accounts[@]}"; do
    grep -qxF "$a" <<<"$have_accounts" || new_accounts+=("$a")
done
if ((${#new_accounts[@]})); then
    log "adding accounts: ${new_accounts[*]}"
    sacctmgr_do add account "$(IFS=,; echo "${new_accounts[*]}")" \
        cluster="$TB_CLUSTER" description=testbed organization=gpuhub
fi

# root and the ssh user: an association with every account, every QoS
# allowed, default account physics, default QoS normal.
for user in root "$TB_SSH_USER"; do
    have=$(sacctmgr -n -P list assoc where user="$user" cluster="$TB_CLUSTER" \
           format=account,qos,defaultqos)
    missing_assoc=()
    for a in "${plan_accounts[@]}"; do
        awk -F'|' -v a="$a" '$1 == a {found = 1} END {exit !found}' <<<"$have" \
            || missing_assoc+=("$a")
    done
    if ((${#missing_assoc[@]})); then
        log "associating $user with: ${missing_assoc[*]}"
        sacctmgr_do add user "$user" cluster="$TB_CLUSTER" \
            account="$(IFS=,; echo "${missing_assoc[*]}")" defaultaccount=physics
        have=$(sacctmgr -n -P list assoc where user="$user" cluster="$TB_CLUSTER" \
               format=account,qos,defaultqos)
    fi
    needs_qos=
    while IFS='|' read -r _acct qos dqos; do
        [[ $(csv_sort "$qos") == "$QOS_CSV" && $dqos == normal ]] || needs_qos=1
    done <<<"$have"
    if [[ -n $needs_qos ]]; then
        log "allowing QoS $QOS_CSV for $user"
        sacctmgr_do modify user where name="$user" cluster="$TB_CLUSTER" \
            set qos="$QOS_CSV" defaultqos=normal
    fi
    if [[ $(sacctmgr -n -P list user "$user" format=defaultaccount) != physics ]]; then
        sacctmgr_do modify user where name="$user" set defaultaccount=physics
    fi
done

# ---------------------------------------------------------------------------
# 7. slurmctld and the two slurmd
# ---------------------------------------------------------------------------
slurmd_pidfile() { echo "$TB_RUN/slurmd-$1.pid"; }

if [[ -n $SLURM_CONF_CHANGED ]]; then
    # Node and GRES definitions are only read at daemon start (scontrol
    # reconfigure does not add nodes or GPUs), so restart what runs.
    running=
    for n in "${TB_NODES[@]}"; do
        pid_alive "$(slurmd_pidfile "$n")" slurmd && running=1
    done
    pid_alive "$TB_RUN/slurmctld.pid" slurmctld && running=1
    if [[ -n $running ]]; then
        log "configuration changed: restarting slurmctld and slurmd"
        for n in "${TB_NODES[@]}"; do stop_pidfile "$(slurmd_pidfile "$n")" slurmd; done
        stop_pidfile "$TB_RUN/slurmctld.pid" slurmctld
    fi
fi

if pid_alive "$TB_RUN/slurmctld.pid" slurmctld && ctld_ok; then
    log "slurmctld: running"
else
    stop_pidfile "$TB_RUN/slurmctld.pid" slurmctld   # a hung one, if any
    log "starting slurmctld"
    "${TB_DAEMON_ENV[@]}" /usr/sbin/slurmctld </dev/null >>"$TB_LOG/slurmctld.log" 2>&1 \
        || die "slurmctld failed to start" "$TB_LOG/slurmctld.log"
    wait_until 30 ctld_ok || die "slurmctld does not answer" "$TB_LOG/slurmctld.log"
fi

# node_registered NODE SINCE: slurmctld has heard from a slurmd of NODE
# started at or after SINCE. slurmctld keeps showing a node as idle for
# SlurmdTimeout after its slurmd died, so the state alone proves nothing.
node_registered() {
    local t
    t=$(scontrol -o show node "$1" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*')
    t=${t#SlurmdStartTime=}
    [[ -n $t && ! $t < $2 ]] && pid_alive "$(slurmd_pidfile "$1")" slurmd
}

started_nodes=()
since=$(date -d '-1 sec' +%Y-%m-%dT%H:%M:%S)
for n in "${TB_NODES[@]}"; do
    if pid_alive "$(slurmd_pidfile "$n")" slurmd; then
        log "slurmd $n: running"
    else
        log "starting slurmd $n"
        "${TB_DAEMON_ENV[@]}" /usr/sbin/slurmd -N "$n" \
            </dev/null >>"$TB_LOG/slurmd-$n.log" 2>&1 \
            || die "slurmd $n failed to start" "$TB_LOG/slurmd-$n.log"
        started_nodes+=("$n")
    fi
done
for n in "${started_nodes[@]}"; do
    wait_until 30 node_registered "$n" "$since" \
        || die "slurmd $n did not register with slurmctld" \
               "$TB_LOG/slurmd-$n.log" "$TB_LOG/slurmctld.log"
done
for n in "${TB_NODES[@]}"; do
    if ! wait_until 30 node_ok "$n"; then
        # A node drained by an earlier bad config stays drained after the fix
        # (ReturnToService only revives DOWN nodes): resume it once.
        log "node $n is '$(node_state "$n")': resuming it"
        scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
        wait_until 20 node_ok "$n" || {
            scontrol show node "$n" >&2 || true
            die "node $n is not usable (state '$(node_state "$n")')" \
                "$TB_LOG/slurmd-$n.log" "$TB_LOG/slurmctld.log"
        }
    fi
done

# ---------------------------------------------------------------------------
# 8. sshd login node on 127.0.0.1:2222
# ---------------------------------------------------------------------------
if [[ ! -s $TB_SSH/ssh_host_ed25519_key ]]; then
    log "generating sshd host key"
    ssh-keygen -q -t ed25519 -N '' -C gpuhub-testbed-host -f "$TB_SSH/ssh_host_ed25519_key"
fi
if [[ ! -s $TB_SSH/id_ed25519 ]]; then
    log "generating client key"
    ssh-keygen -q -t ed25519 -N '' -C gpuhub-testbed -f "$TB_SSH/id_ed25519"
fi
chmod 600 "$TB_SSH/ssh_host_ed25519_key" "$TB_SSH/id_ed25519"

# Keys are authorised from a root-owned directory (sshd's StrictModes
# accepts it), so root's own ~/.ssh is never touched.
mkdir -p "$TB_SSH/authorized_keys"
chmod 755 "$TB_SSH/authorized_keys"
for user in root "$TB_SSH_USER"; do
    install_if_changed "$TB_SSH/id_ed25519.pub" "$TB_SSH/authorized_keys/$user" \
        644 root:root || true
done
printf '[127.0.0.1]:%s %s\n' "$TB_SSH_PORT" \
    "$(cut -d' ' -f1,2 "$TB_SSH/ssh_host_ed25519_key.pub")" >"$GEN/known_hosts"
install_if_changed "$GEN/known_hosts" "$TB_SSH/known_hosts" 644 root:root || true

# Convenience copies for the ssh user (same key, same host key).
HUB_SSH=$HUB_HOME/.ssh
mkdir -p "$HUB_SSH"
install_if_changed "$TB_SSH/id_ed25519" "$HUB_SSH/id_ed25519" 600 "$TB_SSH_USER:$TB_SSH_USER" || true
install_if_changed "$TB_SSH/id_ed25519.pub" "$HUB_SSH/id_ed25519.pub" 644 "$TB_SSH_USER:$TB_SSH_USER" || true
install_if_changed "$TB_SSH/id_ed25519.pub" "$HUB_SSH/authorized_keys" 600 "$TB_SSH_USER:$TB_SSH_USER" || true
install_if_changed "$TB_SSH/known_hosts" "$HUB_SSH/known_hosts" 644 "$TB_SSH_USER:$TB_SSH_USER" || true
chown "$TB_SSH_USER:$TB_SSH_USER" "$HUB_SSH"
chmod 700 "$HUB_SSH"

cat >"$GEN/sshd_config" <<EOF
# Generated by scripts/testbed/up.sh -- do not edit by hand.
Port $TB_SSH_PORT
ListenAddress 127.0.0.1
HostKey $TB_SSH/ssh_host_ed25519_key
PidFile $TB_RUN/sshd.pid
AuthorizedKeysFile $TB_SSH/authorized_keys/%u .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
# No PAM: its session modules (loginuid, systemd) are not reliable without
# an init system, and key-only logins do not need it.
UsePAM no
# Tests open many sessions in parallel.
MaxStartups 200:30:400
MaxSessions 200
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
SSHD_CONF_CHANGED=
install_if_changed "$GEN/sshd_config" "$TB_SSH/sshd_config" 644 root:root \
    && SSHD_CONF_CHANGED=1
mkdir -p /run/sshd          # privilege separation directory
chmod 755 /run/sshd
/usr/sbin/sshd -t -f "$TB_SSH/sshd_config" || die "invalid sshd_config"
if [[ -n $SSHD_CONF_CHANGED ]] && pid_alive "$TB_RUN/sshd.pid" sshd; then
    log "sshd_config changed: restarting sshd"
    stop_pidfile "$TB_RUN/sshd.pid" sshd
fi
if pid_alive "$TB_RUN/sshd.pid" sshd; then
    log "sshd: running"
else
    log "starting sshd (127.0.0.1:$TB_SSH_PORT)"
    "${TB_DAEMON_ENV[@]}" /usr/sbin/sshd -f "$TB_SSH/sshd_config" -E "$TB_LOG/sshd.log" \
        </dev/null || die "sshd failed to start" "$TB_LOG/sshd.log"
fi
wait_until 15 sshd_ok || die "ssh login as $TB_SSH_USER fails" "$TB_LOG/sshd.log"
ssh_cmd "$TB_SSH_USER@127.0.0.1" 'sinfo -h >/dev/null' \
    || die "Slurm client commands fail over ssh" "$TB_LOG/sshd.log"

# ---------------------------------------------------------------------------
# 9. testbed.env
# ---------------------------------------------------------------------------
FPR=$(ssh-keygen -l -E sha256 -f "$TB_SSH/ssh_host_ed25519_key.pub" | awk '{print $2}')
SLURM_VERSION=$(sinfo -V | awk '{print $NF}')
cat >"$GEN/testbed.env" <<EOF
# Generated by scripts/testbed/up.sh: the gpuhub testbed (shell-sourceable).
TESTBED_SSH_HOST=127.0.0.1
TESTBED_SSH_PORT=$TB_SSH_PORT
TESTBED_SSH_USER=$TB_SSH_USER
TESTBED_SSH_KEY=$TB_SSH/id_ed25519
TESTBED_KNOWN_HOSTS=$TB_SSH/known_hosts
TESTBED_HOST_KEY_FINGERPRINT=$FPR
TESTBED_CLUSTER=$TB_CLUSTER
TESTBED_NODES=$PLAN_NODES
TESTBED_GPU_TYPES=$PLAN_GPU_TYPES
TESTBED_PARTITIONS=$PLAN_PARTITIONS
TESTBED_DEFAULT_PARTITION=gpu
TESTBED_FEATURES=$PLAN_FEATURES
TESTBED_LICENSES=$PLAN_LICENSES
TESTBED_ACCOUNTS=$PLAN_ACCOUNTS
TESTBED_DEFAULT_ACCOUNT=physics
TESTBED_QOS=$QOS_CSV
TESTBED_GPUS_PER_TYPE_PER_NODE=8
TESTBED_SLURM_VERSION=$SLURM_VERSION
EOF
install_if_changed "$GEN/testbed.env" "$TB_ENV_FILE" 644 root:root \
    && log "wrote $TB_ENV_FILE"

log "nodes: $(sinfo -h -N -o '%N=%T' | sort -u | paste -sd' ' -)," \
    "GPU types: $PLAN_GPU_TYPES (8 each per node), partitions: $PLAN_PARTITIONS"
log "testbed ready in $((SECONDS - T0)) s (Slurm $SLURM_VERSION, ssh $TB_SSH_USER@127.0.0.1:$TB_SSH_PORT)"
