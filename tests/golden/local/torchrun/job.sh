#!/bin/bash
# gpuhub 0.1.0: site local (local), 0 GPU(s)
# --- environment
export GPUHUB_SITE=local
export GPUHUB_JOB_NAME=ddp
export GPUHUB_NODES=1
export GPUHUB_GPUS_PER_NODE=0
# --- command
torchrun --standalone --nproc-per-node=1 train.py --lr 0.1
