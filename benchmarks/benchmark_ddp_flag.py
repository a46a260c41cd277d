"""What the NaN guard's per-step flag costs under DDP: one all-reduce of a one-element int32 tensor, against DDP's own
per-step all-reduce of the gradients (ALL U-KAN 2D, 2,806,120 float32 parameters), both on two gloo processes on
this machine's CPU. Prints microseconds per call and the ratio.

    python benchmarks/benchmark_ddp_flag.py [--repeats 2000] [--gradient-elements 2806120]

On GPUs nnU-Net uses NCCL, where a one-element all-reduce is a latency-bound kernel (expected in the tens of
microseconds between the GPUs of one machine; not measured here).
"""
from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _time_all_reduce(tensor: torch.Tensor, repeats: int) -> float:
    for _ in range(max(10, repeats // 20)):
        dist.all_reduce(tensor)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    return (time.perf_counter() - start) / repeats


def _worker(rank: int, port: int, repeats: int, gradient_elements: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        flag = _time_all_reduce(torch.zeros(1, dtype=torch.int32), repeats)
        gradients = _time_all_reduce(torch.zeros(gradient_elements), max(20, repeats // 100))
        if rank == 0:
            results.put((flag, gradients))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--gradient-elements", type=int, default=2_806_120)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, args=(port, args.repeats, args.gradient_elements, results), nprocs=2,
                       start_method="spawn")
    flag, gradients = results.get()
    print(f"gloo, 2 processes: flag all-reduce (1 x int32) {flag * 1e6:.1f} us per call; gradient all-reduce "
          f"({args.gradient_elements:,} x float32) {gradients * 1e6:.0f} us per call; flag / gradients = "
          f"{flag / gradients:.4f}")


if __name__ == "__main__":
    main()
