#!/bin/bash
# gpuhub 0.1.0: wrapper run by HTCondor on site htcondor-example
# --- environment
export GPUHUB_SITE=htcondor-example
export GPUHUB_JOB_NAME=ddp
export GPUHUB_NODES=1
export GPUHUB_GPUS_PER_NODE=4
# --- command
torchrun --standalone --nproc-per-node=4 train.py --lr 0.1
