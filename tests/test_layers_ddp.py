"""ALL U-KAN under DistributedDataParallel (``nnUNetv2_train ... -num_gpus N``), on 2 CPU processes with gloo.

Each process takes half of the global batch; DDP averages the gradients. With BatchNorm in eval mode (running
statistics) that equals one process on the whole batch. In train mode, BatchNorm normalises each process' own
half (nnU-Net converts to SyncBatchNorm on CUDA, which CPU does not support), so DDP equals the mean of the two
halves' gradients computed in one process: both are checked, in float64.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_allukan.networks import ALLUKAN

BATCH, SIZE = 4, 32


def _network():
    torch.manual_seed(0)
    return ALLUKAN(input_channels=1, num_classes=2, embed_dims=(16, 32, 32)).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    return x, (x > 0).long().squeeze(1)


def _grads(net, x, y):
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    return [p.grad.detach().clone() for p in net.parameters()]


def _worker(rank: int, world: int, port: int, train_mode: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = _network().train(train_mode)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        x, y = _batch()
        half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        grads = _grads(ddp, x[half], y[half])
        if rank == 0:
            torch.save(grads, out)
        # Both ranks done before teardown: a rank that destroys its group while the other still has gloo work
        # in flight can abort the other ("terminate called without an active exception", seen 1 run in 3).
        dist.barrier()
        open(f"{out}.done{rank}", "w").close()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
@pytest.mark.parametrize("train_mode", [False, True], ids=["bn-eval", "bn-train"])
def test_ddp_gradients_equal_single_process(tmp_path, train_mode):
    out = str(tmp_path / "grads.pt")
    try:
        mp.start_processes(_worker, args=(2, _free_port(), train_mode, out), nprocs=2, join=True,
                           start_method="spawn")
    except mp.ProcessExitedException:
        # Even after the barrier, gloo rarely (~1 run in 30 here) aborts a rank while the process group is torn
        # down; the gradients were computed and saved by then. Anything that fails earlier still fails the test.
        if not all(os.path.exists(f"{out}.done{rank}") for rank in range(2)):
            raise
    ddp_grads = torch.load(out)
    net = _network().train(train_mode)
    x, y = _batch()
    if train_mode:  # per-process BatchNorm statistics: the mean of the halves' gradients
        halves = [_grads(net, x[i * BATCH // 2:(i + 1) * BATCH // 2], y[i * BATCH // 2:(i + 1) * BATCH // 2])
                  for i in range(2)]
        single = [(a + b) / 2 for a, b in zip(*halves)]
    else:
        single = _grads(net, x, y)
    assert len(ddp_grads) == len(single) == len(list(net.parameters()))
    for (name, _), a, b in zip(net.named_parameters(), ddp_grads, single):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
