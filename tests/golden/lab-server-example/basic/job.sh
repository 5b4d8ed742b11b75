#!/bin/bash
# gpuhub 0.1.0: site lab-server-example (ssh), 1 GPU(s)
# --- environment
export GPUHUB_SITE=lab-server-example
export GPUHUB_JOB_NAME=train
export GPUHUB_NODES=1
export GPUHUB_GPUS_PER_NODE=1
export OMP_NUM_THREADS=8
# --- site setup
source "$HOME/venvs/train/bin/activate"
# --- command
python train.py --lr 0.1
