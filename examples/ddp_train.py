"""A small real DDP training job: synthetic regression, checkpoints, resumes after a requeue.

Runs with Gloo on CPUs and NCCL on GPUs, under any gpuhub launcher:

    gpuhub submit --site jean-zay -P abc --gpu-type a100 --nodes 2 --gpus-per-node 8 \\
        --launcher torchrun --requeue -t 20h -- python examples/ddp_train.py --steps 20000
    gpuhub submit --site local --launcher torchrun --gpus 0 -- python examples/ddp_train.py

At the end rank 0 prints one line ``GPUHUB-RESULT {json}``: world size, the all-reduce check,
whether every rank ended with identical weights, and where the run resumed from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gpuhub import dist as gdist


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--checkpoint", default="ddp_checkpoint.pt", help="checkpoint file (shared by all ranks)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step (to test preemption)")
    parser.add_argument("--backend", default=None, help="gloo or nccl (default: nccl on GPUs, else gloo)")
    return parser.parse_args()


def weights_digest(model: nn.Module) -> str:
    flat = torch.cat([p.detach().cpu().flatten() for p in model.parameters()])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]


def everyone_agrees(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any: all ranks must checkpoint at the same step."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def main() -> int:
    args = parse_args()
    info = gdist.init_process_group(args.backend)
    device = torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    preemption = gdist.Preemption()
    print(f"rank {info.rank}/{info.world_size} (local {info.local_rank}) via {info.launcher} on "
          f"{os.environ.get('SLURMD_NODENAME', os.uname().nodename)}, master {info.master_addr}:{info.master_port}",
          flush=True)

    check = torch.tensor([float(info.rank + 1)], device=device)
    dist.all_reduce(check)
    expected = info.world_size * (info.world_size + 1) / 2

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts them)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[info.local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr)
    true_w = torch.linspace(-1, 1, 16, device=device)

    ckpt = Path(args.checkpoint)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        if info.is_main:
            print(f"resumed from step {start} (restart {gdist.restart_count()})", flush=True)

    loss = torch.tensor(0.0)
    step = start
    for step in range(start, args.steps):
        gen = torch.Generator(device="cpu").manual_seed(step * 1000 + info.rank)
        x = torch.randn(args.batch, 16, generator=gen).to(device)
        y = (x @ true_w).unsqueeze(1)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        optimizer.step()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        stop = everyone_agrees(preemption.requested, device)
        if stop or (step + 1) % args.checkpoint_every == 0:
            if info.is_main:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1},
                           ckpt.with_suffix(".tmp"))
                os.replace(ckpt.with_suffix(".tmp"), ckpt)
            dist.barrier()
        if stop:
            if info.is_main:
                print(f"checkpoint at step {step + 1}: stopping for the requeue", flush=True)
            shutdown()
            return 0

    digests: list[str | None] = [None] * info.world_size
    dist.all_gather_object(digests, weights_digest(model))
    if info.is_main:
        result = {
            "world_size": info.world_size,
            "allreduce": check.item(),
            "allreduce_expected": expected,
            "weights_equal": len(set(digests)) == 1,
            "digest": digests[0],
            "resumed_from": start,
            "restarts": gdist.restart_count(),
            "steps": args.steps,
            "final_loss": round(float(loss.detach()), 6),
        }
        print("GPUHUB-RESULT " + json.dumps(result), flush=True)
    shutdown()
    return 0


def shutdown() -> None:
    """Meet every rank, then tear the process group down."""
    dist.barrier()
    dist.destroy_process_group()


def leave(code: int) -> None:
    """Exit without running C++ static destructors: with Gloo, a torch thread still joinable at
    interpreter exit sometimes aborts the process ("terminate called without an active exception")
    after the work is done, which the launcher would report as a failed job."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
