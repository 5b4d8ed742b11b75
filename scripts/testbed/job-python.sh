#!/usr/bin/env bash
# A Python for jobs on the testbed: the test jobs run as hubuser, who cannot read root's
# interpreter, so they get a world-readable venv with PyTorch (CPU) and this checkout's gpuhub
# (for gpuhub.dist). Idempotent: torch is installed once; gpuhub is refreshed every run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv=/opt/gpuhub-testbed/venv
torch_version="${GPUHUB_TORCH_VERSION:-2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  if ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  echo "job-python: installing torch==$torch_version into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==$torch_version" numpy
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "$repo" >/dev/null
chmod -R a+rX "$(dirname "$venv")"
mkdir -p /var/lib/gpuhub-testbed
echo "TESTBED_JOB_PYTHON=$venv/bin/python" > /var/lib/gpuhub-testbed/job-python.env
echo "job-python: $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)') in $venv"
