#!/bin/bash
# gpuhub 0.1.0: site local (local), 0 GPU(s)
# --- environment
export GPUHUB_SITE=local
export GPUHUB_JOB_NAME='train node'
export GPUHUB_NODES=1
export GPUHUB_GPUS_PER_NODE=0
export SEED=1
cd -- "$HOME"/'runs/exp 1' || { echo "gpuhub: cannot enter working directory" >&2; exit 1; }
# --- command
python train.py --lr 0.1
