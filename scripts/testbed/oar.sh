#!/usr/bin/env bash
# A real OAR 2.5.9 cluster from Debian's packages, beside the Slurm testbed: the OAR server
# (Almighty, port 6666), its PostgreSQL database (Debian's default cluster, 127.0.0.1:5432), the
# oar-node sshd (port 6667, user oar) and two fake hosts, oarnode1 and oarnode2, whose resources
# carry the gpu / gpudevice / gpumodel properties GRICAD's and Grid'5000's clusters use.
# Jobs really run: OAR ssh-es to the node (loopback), then runs the job as its user.
#
# Idempotent, no systemd needed (daemons are started directly). A second run on a healthy
# testbed changes nothing. Run as root. Writes /var/lib/gpuhub-testbed/oar.env.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

OAR_ENV_FILE=$TB_STATE/oar.env
OAR_CONF=/etc/oar/oar.conf
PG_VERSION=15
PG_CLUSTER=main   # Debian's default cluster: what `oar-database --db-is-local` administers
PG_PORT=5432
OAR_HOSTS=(oarnode1 oarnode2)
OAR_GPUS_PER_HOST=4
OAR_CORES_PER_GPU=2
# One GPU model per host, so that `-p "gpumodel='V100'"` really selects a host.
declare -A OAR_MODEL=([oarnode1]=A100 [oarnode2]=V100)
NODE_SSHD_PID=/run/oar-node_sshd.pid
SERVER_PID=/run/oar-server.pid

if [ "$(id -u)" -ne 0 ]; then
  echo "oar.sh: run as root (it installs packages and starts daemons)" >&2
  exit 1
fi
mkdir -p "$TB_STATE" "$TB_LOG"

# ---- packages ---------------------------------------------------------------------------------
# libjson-perl: without it `oarstat -J` fails; libyaml-perl: `oarstat -Y`.
PKGS=(postgresql oar-server oar-server-pgsql oar-node oar-user oar-user-pgsql libjson-perl libyaml-perl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "oar: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

# ---- names of the fake hosts ------------------------------------------------------------------
for h in "${OAR_HOSTS[@]}"; do
  grep -qE "^127\.0\.0\.1[[:space:]]+$h([[:space:]]|$)" /etc/hosts \
    || printf '127.0.0.1\t%s\t# gpuhub-testbed oar\n' "$h" >>/etc/hosts
done

# ---- PostgreSQL (Debian's default cluster, loopback only; the 15432 cluster is not touched) ----
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
  pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
fi
PG_CONF_DIR=/etc/postgresql/$PG_VERSION/$PG_CLUSTER
mkdir -p "$PG_CONF_DIR/conf.d"
printf "listen_addresses = '127.0.0.1'\n" >"$PG_CONF_DIR/conf.d/gpuhub-oar.conf"
if ! pg_lsclusters -h | awk -v c="$PG_CLUSTER" '$2==c {print $4}' | grep -q online; then
  pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
fi
wait_until 10 pg_isready -q -h 127.0.0.1 -p "$PG_PORT" \
  || die "PostgreSQL $PG_VERSION/$PG_CLUSTER did not come up" \
         "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"

# ---- oar.conf -----------------------------------------------------------------------------------
# Passwords made once and kept (root-only files; oar.conf itself is mode 0600).
pw_file() {
  local f=$TB_STATE/$1
  [ -s "$f" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f")
  cat "$f"
}
DB_PW=$(pw_file oar-db.password)
DB_PW_RO=$(pw_file oar-db-ro.password)
conf_before=$(md5sum <"$OAR_CONF")
set_conf() {  # set_conf KEY VALUE: replace the (possibly commented) KEY= line, or add it
  local key=$1 value=$2
  if ! grep -qx "$key=\"$value\"" "$OAR_CONF"; then
    if grep -qE "^#?[[:space:]]*$key=" "$OAR_CONF"; then
      sed -i -E "0,/^#?[[:space:]]*$key=/s|^#?[[:space:]]*$key=.*|$key=\"$value\"|" "$OAR_CONF"
    else
      printf '%s="%s"\n' "$key" "$value" >>"$OAR_CONF"
    fi
  fi
}
set_conf DB_HOSTNAME 127.0.0.1
set_conf DB_PORT "$PG_PORT"
set_conf DB_BASE_PASSWD "$DB_PW"
set_conf DB_BASE_PASSWD_RO "$DB_PW_RO"
# The cgroup (v1) job resource manager cannot work here: without this key OAR skips it.
sed -i -E 's|^JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD=|#&|' "$OAR_CONF"
# Tests submit jobs one after the other: let the scheduler run every second, not every 5 s.
set_conf SCHEDULER_MIN_TIME_BETWEEN_2_CALLS 1
conf_changed=$([ "$(md5sum <"$OAR_CONF")" = "$conf_before" ] && echo no || echo yes)

# ---- database -----------------------------------------------------------------------------------
psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'oar'")" != 1 ]; then
  log "oar: creating the OAR database"
  oar-database --create --db-is-local >"$TB_LOG/oar-database.log" 2>&1 \
    || die "oar-database --create failed" "$TB_LOG/oar-database.log"
fi
# Keep the roles' passwords equal to oar.conf's (the password files may have been remade).
psql_admin -c "ALTER ROLE oar PASSWORD '$DB_PW'" -c "ALTER ROLE oar_ro PASSWORD '$DB_PW_RO'"

# ---- oar-node: OAR's own sshd (port 6667, user oar only, key in /var/lib/oar/.ssh) ------------
# Started directly rather than through /etc/init.d/oar-node, bound to loopback.
mkdir -p /run/sshd
if ! pid_alive "$NODE_SSHD_PID" sshd; then
  /usr/sbin/sshd -f /etc/oar/sshd_config -o PidFile="$NODE_SSHD_PID" -o ListenAddress=127.0.0.1 \
    -E "$TB_LOG/oar-node-sshd.log" || die "the oar-node sshd did not start" "$TB_LOG/oar-node-sshd.log"
fi
oar_ssh_ok() { runuser -u oar -- ssh -p 6667 -o BatchMode=yes -o ConnectTimeout=5 "$1" true; }
for h in "${OAR_HOSTS[@]}"; do
  wait_until 10 oar_ssh_ok "$h" || die "user oar cannot ssh to $h:6667" "$TB_LOG/oar-node-sshd.log"
done

# ---- oar-server (Almighty, port 6666) -----------------------------------------------------------
# /proc/PID/comm of the Perl daemon is "Almighty".
almighty_ok() { pid_alive "$SERVER_PID" Almighty; }
if [ "$conf_changed" = yes ] && almighty_ok; then
  log "oar: oar.conf changed, restarting Almighty"
  stop_pidfile "$SERVER_PID" Almighty   # jobs run detached from the server and survive this
fi
if ! almighty_ok; then
  /usr/sbin/oar-server   # daemonises, writes $SERVER_PID
  wait_until 15 almighty_ok || die "Almighty did not start" /var/log/oar.log
fi

# ---- resource properties and resources ----------------------------------------------------------
# Each resource is one core; every GPU owns OAR_CORES_PER_GPU cores, as on GRICAD's Bigfoot
# (`-l /nodes=1/gpu=2` then holds 2 distinct `gpu` values).
have_props=$(oarproperty -l)
for p in host gpumodel; do grep -qx "$p" <<<"$have_props" || oarproperty -q -a "$p" -c; done
for p in cpu core gpu gpudevice; do grep -qx "$p" <<<"$have_props" || oarproperty -q -a "$p"; done
core=0
for ((i = 0; i < ${#OAR_HOSTS[@]}; i++)); do
  h=${OAR_HOSTS[$i]}
  if oarnodes -J "$h" 2>/dev/null | grep -q '"resource_id"'; then
    core=$((core + OAR_GPUS_PER_HOST * OAR_CORES_PER_GPU))
    continue
  fi
  log "oar: adding the resources of $h"
  for ((d = 0; d < OAR_GPUS_PER_HOST; d++)); do
    for ((c = 0; c < OAR_CORES_PER_GPU; c++)); do
      core=$((core + 1))
      oarnodesetting -a -h "$h" -p host="$h" -p cpu=$((i + 1)) -p core=$core \
        -p cpuset=$((d * OAR_CORES_PER_GPU + c)) -p gpu=$((i * OAR_GPUS_PER_HOST + d + 1)) \
        -p gpudevice=$d -p gpumodel="${OAR_MODEL[$h]}" >/dev/null
    done
  done
done
# A resource left Suspected/Absent (e.g. the node sshd was down when OAR checked) comes back.
for h in "${OAR_HOSTS[@]}"; do
  if oarnodes -J "$h" | grep '"state"' | grep -qv Alive; then
    oarnodesetting -h "$h" -s Alive >/dev/null
  fi
done

# ---- connection facts for the tests -------------------------------------------------------------
{
  echo "OAR_TESTBED_HOSTS=$(IFS=,; echo "${OAR_HOSTS[*]}")"
  echo "OAR_TESTBED_GPUS_PER_HOST=$OAR_GPUS_PER_HOST"
  echo "OAR_TESTBED_CORES_PER_GPU=$OAR_CORES_PER_GPU"
  echo "OAR_TESTBED_MODELS=$(for h in "${OAR_HOSTS[@]}"; do printf '%s:%s,' "$h" "${OAR_MODEL[$h]}"; done | sed 's/,$//')"
  echo "OAR_TESTBED_VERSION=$(dpkg-query -W -f '${Version}' oar-server)"
  echo "OAR_TESTBED_DB_PORT=$PG_PORT"
} >"$OAR_ENV_FILE.tmp"
mv "$OAR_ENV_FILE.tmp" "$OAR_ENV_FILE"
log "oar: OAR $(dpkg-query -W -f '${Version}' oar-server) up: Almighty on 6666, node sshd on 6667," \
    "${#OAR_HOSTS[@]} hosts x $OAR_GPUS_PER_HOST GPUs, database on 127.0.0.1:$PG_PORT ($OAR_ENV_FILE)"
