# Shared settings and helpers of the testbed scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts

TB_STATE=/var/lib/gpuhub-testbed
TB_LOG=$TB_STATE/log
TB_RUN=$TB_STATE/run
TB_SSH=$TB_STATE/ssh
TB_MYSQL=$TB_STATE/mysql
TB_ENV_FILE=$TB_STATE/testbed.env
SLURM_ETC=/etc/slurm

TB_CLUSTER=gpuhub-test
TB_NODES=(n1 n2)
TB_SSH_PORT=2222
TB_SSH_USER=hubuser
# Private MariaDB instance: its own port and socket so that it never clashes
# with a system MariaDB/MySQL.
TB_DB_PORT=17306
TB_DB_SOCK=$TB_MYSQL/mysqld.sock
TB_DB_NAME=slurm_acct_db
TB_DB_USER=slurm
TB_DB_PASS=gpuhub-testbed   # loopback-only throw-away database

# Daemons get a clean, predictable environment (no pyenv/venv PATH, no
# caller variables leaking into jobs through slurmd).
TB_DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

log()  { printf '[testbed] %s\n' "$*"; }
warn() { printf '[testbed] WARNING: %s\n' "$*" >&2; }

# ensure_login_user USER: a local user with a home (mode 755) who may log in over the
# testbed sshd with a key.
ensure_login_user() {
    local user=$1 home
    if ! id "$user" >/dev/null 2>&1; then
        log "creating user $user"
        useradd -m -d "/home/$user" -s /bin/bash "$user"
    fi
    # useradd leaves the password field '!' (locked). Our sshd runs without PAM,
    # and then refuses locked accounts even for key logins; '*' means "no
    # password" without the lock.
    if [[ $(getent shadow "$user" | cut -d: -f2) == '!'* ]]; then
        usermod -p '*' "$user"
    fi
    home=$(getent passwd "$user" | cut -d: -f6)
    mkdir -p "$home"
    chown "$user:" "$home"
    chmod 755 "$home"
}

# Print the end of a log file, for failure reports.
tail_log() {
    local f=$1 n=${2:-30}
    if [[ -s $f ]]; then
        printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
        tail -n "$n" "$f" >&2
        printf -- '-----\n' >&2
    else
        printf -- '(no log at %s)\n' "$f" >&2
    fi
}

# die MESSAGE [LOGFILE...]: report and exit non-zero.
die() {
    local msg=$1; shift
    printf '[testbed] ERROR: %s\n' "$msg" >&2
    local f
    for f in "$@"; do tail_log "$f"; done
    exit 1
}

# pid_alive PIDFILE NAME: the pid file names a live process whose command is
# NAME (guards against stale pid files whose pid was reused).
pid_alive() {
    local pidfile=$1 name=$2 pid comm
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name"* ]] && running "$pid"
}

# wait_until SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
wait_until() {
    local timeout=$1; shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# running PID: the process exists and is not a zombie (PID 1 here may be
# slow to reap the daemons it inherited).
running() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# stop_pidfile PIDFILE NAME: TERM, wait, then KILL the daemon of a pid file.
stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    pid_alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
    pid=$(tr -dc '0-9' <"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        warn "$name (pid $pid) ignored SIGTERM, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# ---- health probes (quiet; exit status only) ------------------------------

munge_ok()   { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mysql_ok()   { mariadb-admin --no-defaults --socket="$TB_DB_SOCK" -uroot ping >/dev/null 2>&1; }
dbd_ok()     { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
ctld_ok()    { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# node_state NODE: lower-case state of a node as seen by slurmctld.
node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1; }

# A node is usable when slurmctld sees it responding and not drained/down.
node_ok() {
    local st
    st=$(node_state "$1")
    case $st in
        idle|mixed|allocated|completing) return 0 ;;
        *) return 1 ;;
    esac
}

ssh_cmd() {
    ssh -p "$TB_SSH_PORT" -i "$TB_SSH/id_ed25519" \
        -o UserKnownHostsFile="$TB_SSH/known_hosts" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes \
        -o ConnectTimeout=5 -o LogLevel=ERROR "$@"
}

sshd_ok() {
    ssh_cmd "$TB_SSH_USER@127.0.0.1" true >/dev/null 2>&1
}
