#!/usr/bin/env bash
# Fake HTCondor commands for the testbed: condor_submit, condor_q, condor_history, condor_rm and
# condor_status in /usr/local/bin (on the PATH of the loopback sshd's login user and of root),
# played by scripts/testbed/htcondor/condor_fake.py on HTCondor's own Python bindings (the
# htcondor wheel; no package ships the daemons). State: /var/lib/gpuhub-testbed/condor, shared by
# every user like a schedd's queue. Idempotent; `--reset` empties the queue and history.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv=/opt/gpuhub-testbed/condor-venv
home=/opt/gpuhub-testbed/condor
state=/var/lib/gpuhub-testbed/condor
bin=/usr/local/bin
marker="# gpuhub testbed: fake HTCondor command"
version="$(python3 -c 'import importlib.metadata as m; print(m.version("htcondor"))' 2>/dev/null || true)"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import classad2, htcondor2' 2>/dev/null; then
  echo "htcondor: installing the htcondor bindings${version:+ $version} into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "htcondor${version:+==$version}"
fi
mkdir -p "$home"
install -m 0644 "$here/htcondor/condor_fake.py" "$home/condor_fake.py"
chmod -R a+rX "$(dirname "$venv")"

for cmd in condor_submit condor_q condor_history condor_rm condor_status; do
  target="$bin/$cmd"
  if [ -e "$target" ] && ! grep -q "$marker" "$target" 2>/dev/null; then
    echo "htcondor: $target exists and is not the testbed's fake; leaving it alone" >&2
    exit 1
  fi
  printf '#!/bin/sh\n%s\nexec %s %s %s "$@"\n' "$marker" "$venv/bin/python" "$home/condor_fake.py" "$cmd" \
    > "$target.tmp"
  chmod 0755 "$target.tmp"
  mv -f "$target.tmp" "$target"
done

if [ "${1:-}" = "--reset" ]; then
  rm -rf "$state"
fi
mkdir -p "$state/run"
chmod 0777 "$state" "$state/run"   # every user's commands update the one queue
for f in lock state.json; do
  [ -e "$state/$f" ] || : > "$state/$f"
done
[ -s "$state/state.json" ] || echo '{}' > "$state/state.json"
chmod 0666 "$state/lock" "$state/state.json"
echo "TESTBED_CONDOR_STATE=$state" > /var/lib/gpuhub-testbed/htcondor.env
echo "htcondor: fake condor_* commands in $bin, state in $state"
