#!/usr/bin/env bash
# Install everything the test suite needs (Python packages, the real Slurm + sshd testbed)
# and run it. Safe to re-run: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
bash scripts/testbed/up.sh
bash scripts/testbed/slurm2.sh       # a second cluster (V100), for choosing between sites
bash scripts/testbed/labserver.sh   # a second login user and a fake nvidia-smi for the lab-server tests
bash scripts/testbed/job-python.sh   # PyTorch for the DDP jobs, readable by the testbed's login user
bash scripts/testbed/prometheus.sh install   # the real Prometheus (and promtool) the exporter tests start
bash scripts/testbed/postgres.sh             # PostgreSQL, the team store of the accounting tests
bash scripts/testbed/oar.sh                  # a real OAR 2.5.9 (server, node sshd, two GPU hosts)
bash scripts/testbed/htcondor.sh             # fake condor_* commands (HTCondor daemons cannot be installed here)
python3 -m ruff check src tests benchmarks examples
# The testbed is required here: a test needing it fails rather than skips.
GPUHUB_TESTBED=require python3 -m pytest "$@"
