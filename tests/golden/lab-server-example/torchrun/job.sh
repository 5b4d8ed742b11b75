#!/bin/bash
# gpuhub 0.1.0: site lab-server-example (ssh), 4 GPU(s)
# --- environment
export GPUHUB_SITE=lab-server-example
export GPUHUB_JOB_NAME=ddp
export GPUHUB_NODES=1
export GPUHUB_GPUS_PER_NODE=4
export OMP_NUM_THREADS=8
# --- site setup
source "$HOME/venvs/train/bin/activate"
# --- command
torchrun --standalone --nproc-per-node=4 train.py --lr 0.1
