#!/bin/bash
# gpuhub 0.1.0: site lab-server-example (ssh), 4 GPU(s)
# --- environment
export GPUHUB_SITE=lab-server-example
export GPUHUB_JOB_NAME='train node'
export GPUHUB_NODES=1
export GPUHUB_GPUS_PER_NODE=4
export OMP_NUM_THREADS=8
export SEED=1
# --- site setup
source "$HOME/venvs/train/bin/activate"
cd -- "$HOME"/'runs/exp 1' || { echo "gpuhub: cannot enter working directory" >&2; exit 1; }
# --- command
python train.py --lr 0.1
