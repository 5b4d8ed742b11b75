#!/usr/bin/env bash
# A real Prometheus (Debian package, promtool included) for the exporter tests.
#
#   prometheus.sh install                                  # apt-get install prometheus (idempotent)
#   prometheus.sh start --config FILE --port N --dir DIR   # run it on 127.0.0.1:N, data and pid in DIR
#   prometheus.sh stop --dir DIR                           # stop the instance started with DIR
#   prometheus.sh status --dir DIR                         # exit 0 when that instance answers /-/ready
#
# `start` is idempotent: when DIR already holds a live instance with the same config and port it
# only checks that it is ready. Nothing is started system-wide (no systemd here): the package's
# init script is kept from starting its own daemon on :9090, and every instance this script
# starts is a plain child process with its own storage directory, logging to DIR/prometheus.log.
set -euo pipefail

PKG=prometheus
BIN=/usr/bin/prometheus

log() { printf '[prometheus] %s\n' "$*" >&2; }
die() { printf '[prometheus] ERROR: %s\n' "$*" >&2; exit 1; }

installed() { [[ -x $BIN && -x /usr/bin/promtool ]]; }

cmd_install() {
    if installed; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "installing $PKG needs root (apt-get)"
    log "installing $PKG from Debian packages"
    local created_policy=
    # Keep the package's init script from starting a system-wide Prometheus on :9090.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local apt_log ok='' attempt
    apt_log=$(mktemp /tmp/gpuhub-prometheus-apt.XXXXXX)
    for attempt in 1 2 3; do   # mirrors occasionally fail transiently
        if { apt-get -o DPkg::Lock::Timeout=300 update -q \
                && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
                    install -y -q --no-install-recommends "$PKG"; } >>"$apt_log" 2>&1; then
            ok=1
            break
        fi
        log "apt-get failed (attempt $attempt), retrying"
        sleep 5
    done
    [[ -n $created_policy ]] && rm -f /usr/sbin/policy-rc.d
    if [[ -z $ok ]]; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install $PKG failed (log: $apt_log)"
    fi
    rm -f "$apt_log"
    installed || die "$PKG installed but $BIN or promtool is missing"
}

# ready PORT: Prometheus on 127.0.0.1:PORT answers /-/ready.
ready() {
    python3 - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/-/ready", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

# alive DIR: the pid file of DIR names a live prometheus process.
alive() {
    local pid comm
    [[ -r $1/prometheus.pid ]] || return 1
    pid=$(tr -dc '0-9' <"$1/prometheus.pid")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == prometheus ]]
}

parse_args() {
    CONFIG='' PORT='' DIR=''
    while (($#)); do
        case $1 in
            --config) CONFIG=$(realpath "$2"); shift 2 ;;
            --port) PORT=$2; shift 2 ;;
            --dir) DIR=$(realpath -m "$2"); shift 2 ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ -n $DIR ]] || die "--dir is required"
}

cmd_start() {
    parse_args "$@"
    [[ -n $CONFIG && -r $CONFIG ]] || die "--config FILE (readable) is required"
    [[ $PORT =~ ^[0-9]+$ ]] || die "--port N is required"
    cmd_install
    mkdir -p "$DIR/data"
    local want="$CONFIG $PORT"
    if alive "$DIR"; then
        if [[ $(cat "$DIR/instance" 2>/dev/null) == "$want" ]]; then
            ready "$PORT" && { cat "$DIR/prometheus.pid"; return 0; }
        else
            log "instance in $DIR runs another config or port: restarting it"
        fi
        cmd_stop --dir "$DIR"
    fi
    /usr/bin/promtool check config "$CONFIG" >"$DIR/check-config.log" 2>&1 \
        || { cat "$DIR/check-config.log" >&2; die "promtool rejects $CONFIG"; }
    # setsid: the instance outlives this script and is stopped by `stop`, not by a signal to our group.
    setsid "$BIN" \
        --config.file="$CONFIG" \
        --web.listen-address="127.0.0.1:$PORT" \
        --storage.tsdb.path="$DIR/data" \
        --web.enable-lifecycle \
        --log.level=warn \
        </dev/null >>"$DIR/prometheus.log" 2>&1 &
    echo $! >"$DIR/prometheus.pid"
    echo "$want" >"$DIR/instance"
    local deadline=$((SECONDS + 30))
    until ready "$PORT"; do
        if ! alive "$DIR"; then
            tail -n 20 "$DIR/prometheus.log" >&2
            die "prometheus exited at start (log: $DIR/prometheus.log)"
        fi
        ((SECONDS < deadline)) || die "prometheus not ready on 127.0.0.1:$PORT after 30 s"
        sleep 0.2
    done
    cat "$DIR/prometheus.pid"
}

cmd_stop() {
    parse_args "$@"
    alive "$DIR" || { rm -f "$DIR/prometheus.pid"; return 0; }
    local pid _
    pid=$(tr -dc '0-9' <"$DIR/prometheus.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        alive "$DIR" || break
        sleep 0.1
    done
    if alive "$DIR"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/prometheus.pid"
}

cmd_status() {
    parse_args "$@"
    alive "$DIR" || return 1
    ready "$(cut -d' ' -f2 "$DIR/instance")"
}

case ${1:-} in
    install) shift; cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
esac
