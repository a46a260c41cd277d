"""nnU-Net's multi-GPU path (``nnUNetv2_train ... -num_gpus 2``) on two CPU processes, for tests/test_trainer_ddp.py.

Each rank is a process of its own that calls nnU-Net's per-rank entry, ``nnunetv2.run.run_training.run_ddp``, as
``mp.spawn`` does. Three facts of a GPU machine are replaced, and nothing of nnU-Net or of the trainers:

- the backend: ``dist.init_process_group('nccl')`` becomes gloo;
- CUDA device facts: ``torch.cuda.set_device`` does nothing; the trainer's device (nnU-Net sets ``cuda:<rank>``
  under DDP) is :class:`CpuAsCuda`, a device that reports type ``cuda`` to the trainers' code and is the CPU to
  torch, so that every ``device.type == 'cuda'`` branch runs (autocast and GradScaler disable themselves where
  CUDA is absent); DDP gets no ``device_ids`` for a CPU module; ``torch.cuda``'s memory statistics, synchronize
  and device name answer for the CPU (fixed numbers);
- ``torch.nn.SyncBatchNorm`` (GPU only): :class:`CpuSyncBatchNorm` makes the same collectives as torch's (in
  training: one all_gather of the statistics in forward, one all_reduce in backward), so that a collective made
  by one rank alone hangs here as it would on the GPUs; DDP's refusal of SyncBatchNorm in a CPU module is lifted.

``nnUNet_compile=f`` (a user's setting: inductor on these CPUs takes minutes), unless ``compile_fails``.

Observed, without changing what runs: the batches each rank's training loader yields, the parameters and
gradients each rank hands to ``optimizer.step`` (a global optimizer hook), the parameters at the end. Faults that
can be injected: a NaN in one rank's batch (a corrupt case) at a given training step; torch.compile failing at
the first call of every compiled module (``compile_fails``, with ``nnUNet_compile=t``).

:func:`run_two_ranks` starts both ranks and waits with a hard timeout (a hang fails the test with both ranks'
output, after the process groups are killed).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WORLD_SIZE = 2
# Fixed answers of the faked torch.cuda memory statistics (bytes).
FAKE_TOTAL_MEMORY = 80 * 2 ** 30
FAKE_FREE_MEMORY = 70 * 2 ** 30


class CpuAsCuda(str):
    """A device that is the CPU to torch (torch reads a device from its string) and ``cuda:<index>`` to code that
    asks ``device.type`` / ``device.index``, as the trainers do."""

    type = "cuda"

    def __new__(cls, index: int):
        device = super().__new__(cls, "cpu")
        device.index = index
        return device

    def __repr__(self) -> str:
        return f"device(type='cuda', index={self.index}) (the CPU)"


def _cpu_sync_batch_norm_function():
    import torch
    import torch.distributed as dist

    class CpuSyncBatchNormFunction(torch.autograd.Function):
        """torch's SyncBatchNorm autograd function on the CPU: the same collectives (gloo's all_gather of
        mean / invstd / count in forward, all_reduce of sum_dy / sum_dy_xmu in backward), computed with CPU ops."""

        @staticmethod
        def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum, process_group, world_size):
            dims = [0] + list(range(2, input.dim()))
            count = input.numel() // input.size(1)
            mean = input.mean(dims)
            invstd = torch.rsqrt(input.var(dims, unbiased=False) + eps)
            combined = torch.cat([mean, invstd, torch.full((1,), float(count), dtype=mean.dtype)])
            gathered = [torch.empty_like(combined) for _ in range(world_size)]
            dist.all_gather(gathered, combined, process_group)
            mean_all, invstd_all, count_all = torch.stack(gathered).split(input.size(1), dim=1)
            counts = count_all.reshape(-1)
            total = counts.sum()
            global_mean = (mean_all * counts[:, None]).sum(0) / total
            var_all = 1.0 / invstd_all ** 2 - eps
            global_var = ((var_all + (mean_all - global_mean) ** 2) * counts[:, None]).sum(0) / total
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(global_mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(global_var * total / (total - 1), alpha=momentum)
            global_invstd = torch.rsqrt(global_var + eps)
            shape = [1, -1] + [1] * (input.dim() - 2)
            x_hat = (input - global_mean.view(shape)) * global_invstd.view(shape)
            ctx.save_for_backward(x_hat, weight, global_invstd)
            ctx.process_group, ctx.total = process_group, total
            output = x_hat * weight.view(shape) if weight is not None else x_hat
            return output + bias.view(shape) if bias is not None else output

        @staticmethod
        def backward(ctx, grad_output):
            x_hat, weight, invstd = ctx.saved_tensors
            dims = [0] + list(range(2, grad_output.dim()))
            shape = [1, -1] + [1] * (grad_output.dim() - 2)
            sum_dy = grad_output.sum(dims)
            sum_dy_xhat = (grad_output * x_hat).sum(dims)
            grad_weight = sum_dy_xhat if weight is not None else None
            grad_bias = sum_dy.clone() if weight is not None else None
            combined = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(combined, dist.ReduceOp.SUM, ctx.process_group)
            sum_dy, sum_dy_xhat = combined.split(sum_dy.numel())
            scale = (weight if weight is not None else torch.ones_like(invstd)) * invstd
            grad_input = scale.view(shape) * (grad_output - sum_dy.view(shape) / ctx.total
                                              - x_hat * sum_dy_xhat.view(shape) / ctx.total)
            return grad_input, grad_weight, grad_bias, None, None, None, None, None, None

    return CpuSyncBatchNormFunction


def _cpu_sync_batch_norm_class():
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    function = _cpu_sync_batch_norm_function()

    class CpuSyncBatchNorm(torch.nn.SyncBatchNorm):
        """torch's SyncBatchNorm with its GPU-only exchange replaced by :func:`_cpu_sync_batch_norm_function`."""

        def forward(self, input):
            momentum = 0.0 if self.momentum is None else self.momentum
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
            sync = self.training and dist.is_available() and dist.is_initialized()
            group = self.process_group or dist.group.WORLD
            if sync and dist.get_world_size(group) > 1:
                return function.apply(input, self.weight, self.bias,
                                      self.running_mean if self.track_running_stats else None,
                                      self.running_var if self.track_running_stats else None,
                                      self.eps, momentum, group, dist.get_world_size(group))
            return F.batch_norm(input, self.running_mean if not self.training or self.track_running_stats else None,
                                self.running_var if not self.training or self.track_running_stats else None,
                                self.weight, self.bias, self.training or self.running_mean is None, momentum,
                                self.eps)

    return CpuSyncBatchNorm


def _install(spec: dict, rank: int, record: dict) -> None:
    """The replacements (backend, device facts, SyncBatchNorm) and the observers, in this rank's process."""
    import torch
    import torch.distributed as dist
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.run import run_training
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    init_process_group = dist.init_process_group

    def gloo_process_group(backend=None, *args, **kwargs):
        return init_process_group("gloo" if backend == "nccl" else backend, *args, **kwargs)

    dist.init_process_group = gloo_process_group
    torch.cuda.set_device = lambda device: None
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.reset_peak_memory_stats = lambda device=None: None
    torch.cuda.memory_allocated = lambda device=None: 0
    torch.cuda.max_memory_allocated = lambda device=None: 0
    torch.cuda.empty_cache = lambda: None
    torch.cuda.mem_get_info = lambda device=None: (FAKE_FREE_MEMORY, FAKE_TOTAL_MEMORY)
    torch.cuda.get_device_name = lambda device=None: "CPU (DDP test harness)"
    torch.nn.SyncBatchNorm = _cpu_sync_batch_norm_class()

    ddp = trainer_module.DDP
    # DDP refuses SyncBatchNorm in a CPU module (torch's runs only on GPUs); CpuSyncBatchNorm is the CPU one.
    ddp._passing_sync_batchnorm_handle = lambda self, module: None

    def cpu_ddp(module, device_ids=None, **kwargs):
        return ddp(module, **kwargs)  # device_ids name GPUs; a CPU module takes none

    trainer_module.DDP = cpu_ddp

    get_trainer_from_args = run_training.get_trainer_from_args

    def trainer_on_the_cpu(*args, **kwargs):
        trainer = get_trainer_from_args(*args, **kwargs, device=torch.device("cpu"))
        trainer.device = CpuAsCuda(trainer.local_rank)  # nnU-Net set cuda:<rank> under DDP
        for name, value in spec.get("trainer_settings", {}).items():  # the shrunk run, as other tests do it
            setattr(trainer, name, value)
        record["trainer"] = trainer
        return trainer

    run_training.get_trainer_from_args = trainer_on_the_cpu

    def observe_step(optimizer, args, kwargs):
        if optimizer is not getattr(record.get("trainer"), "optimizer", None):
            return
        if "param_names" not in record:
            from nnunet_allukan.training.base import unwrapped_network

            names = {id(p): n for n, p in unwrapped_network(record["trainer"].network).named_parameters()}
            record["param_names"] = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        step = {"params": [p.detach().clone() for g in optimizer.param_groups for p in g["params"]],
                "grads": [None if p.grad is None else p.grad.detach().clone()
                          for g in optimizer.param_groups for p in g["params"]]}
        record["steps"].append(step if len(record["steps"]) < spec.get("steps_recorded", 1) else None)

    register_optimizer_step_pre_hook(observe_step)

    if spec.get("compile_fails"):
        # torch.compile whose compiled forward fails the first time it runs, as dynamo reports a failed backend
        # (the wrapped module is then never traced: no minutes of compiling on these CPUs)
        from torch._dynamo.exc import BackendCompilerFailed

        compile_module = torch.compile

        def compile_that_fails(model, *args, **kwargs):
            compiled = compile_module(model, backend="eager")

            def forward(*args, **kwargs):
                try:
                    raise AssertionError("synthetic code generation failure (DDP test harness)")
                except AssertionError as error:
                    raise BackendCompilerFailed(compile_that_fails, error, None) from error

            compiled.forward = forward
            return compiled

        torch.compile = compile_that_fails

    original_init, original_next = SingleThreadedAugmenter.__init__, SingleThreadedAugmenter.__next__

    def init(self, data_loader, transform):
        original_init(self, data_loader, transform)
        # nnU-Net's get_dataloaders makes the training loader first, then the validation loader.
        self.harness_role = "train" if not record["loaders"] else "val"
        record["loaders"].append(self.harness_role)

    def next_batch(self):
        batch = original_next(self)
        if getattr(self, "harness_role", None) == "train":
            # get_dataloaders draws one batch to start the loaders: training step i uses draw i + 1
            step = len(record["batches"]) - 1
            nan = spec.get("nan")
            if nan and nan["rank"] == rank and nan["step"] == step:
                batch["data"][0] = float("nan")
            record["batches"].append({"keys": list(batch["keys"]), "data": batch["data"].clone(),
                                      "target": [t.clone() for t in batch["target"]]
                                      if isinstance(batch["target"], list) else batch["target"].clone()}
                                     if 0 <= step < spec.get("steps_recorded", 1) else {"keys": list(batch["keys"])})
        return batch

    SingleThreadedAugmenter.__init__, SingleThreadedAugmenter.__next__ = init, next_batch

    cleanup_ddp = run_training.cleanup_ddp

    def save_then_cleanup():
        save(record, spec, rank)
        # Both ranks done before either tears its group down: gloo can abort a rank whose peer destroys the group
        # while a collective of the other is still in flight (tests/test_layers_ddp.py saw it).
        dist.barrier()
        cleanup_ddp()

    run_training.cleanup_ddp = save_then_cleanup


def save(record: dict, spec: dict, rank: int) -> None:
    import torch

    from nnunet_allukan.training.base import unwrapped_network

    trainer = record.get("trainer")
    out = {"steps": record["steps"], "batches": record["batches"][1:], "param_names": record.get("param_names"),
           "final": None if trainer is None or trainer.network is None else
           {k: v.detach().clone() for k, v in unwrapped_network(trainer.network).state_dict().items()}}
    torch.save(out, Path(spec["out"]) / f"rank{rank}.pt")


def rank_main(rank: int, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
    import torch

    torch.set_num_threads(1)
    record = {"steps": [], "batches": [], "loaders": []}
    _install(spec, rank, record)
    from nnunetv2.run import run_training

    args = (str(spec["dataset"]), spec["configuration"], spec["fold"], spec["trainer"], "nnUNetPlans")
    resume = spec.get("continue", False)
    try:
        if spec.get("final_validation", True):
            # run_ddp(rank, dataset, configuration, fold, tr, p, disable_checkpointing, c, val, pretrained_weights,
            #         npz, val_with_best, world_size), as run_training's mp.spawn passes them
            run_training.run_ddp(rank, *args, False, resume, False, None, False, False, WORLD_SIZE)
        else:
            # run_ddp's own steps up to its final validation (which takes seconds that only one test needs)
            run_training.setup_ddp(rank, WORLD_SIZE)
            torch.cuda.set_device(torch.device("cuda", rank))
            trainer = run_training.get_trainer_from_args(*args, resume)
            run_training.maybe_load_checkpoint(trainer, resume, False, None)
            trainer.run_training()
            run_training.cleanup_ddp()
    finally:
        if not (Path(spec["out"]) / f"rank{rank}.pt").exists():
            save(record, spec, rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """The outcome of :func:`run_two_ranks`: exit codes, outputs, the recorded tensors of each rank."""

    def __init__(self, returncodes, outputs, out: Path, timed_out: bool):
        self.returncodes, self.outputs, self.out, self.timed_out = returncodes, outputs, out, timed_out

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- rank {r} (exit {c}) ---\n{o[-chars:]}"
                         for r, (c, o) in enumerate(zip(self.returncodes, self.outputs)))

    def record(self, rank: int) -> dict:
        import torch

        return torch.load(self.out / f"rank{rank}.pt", weights_only=False)


def run_two_ranks(spec: dict, env: dict, out: Path, timeout: float) -> Ranks:
    """Runs ``spec`` (dataset, configuration, fold, trainer, and optionally continue, final_validation,
    trainer_settings, steps_recorded, nan, compile_fails) on two ranks; kills both process groups after ``timeout``
    seconds."""
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(spec, port=_free_port(), out=str(out))
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec))
    tests = str(Path(__file__).resolve().parent)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(env, PYTHONPATH=os.pathsep.join([root, tests, env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", PYTHONUNBUFFERED="1")
    # nnU-Net compiles by default on CUDA; inductor on these CPUs would take minutes (tests of their own). With
    # compile_fails, nnU-Net compiles and every compiled module fails at its first call.
    env["nnUNet_compile"] = "t" if spec.get("compile_fails") else "f"
    logs = [open(out / f"rank{rank}.log", "w+") for rank in range(WORLD_SIZE)]
    processes = [subprocess.Popen([sys.executable, "-c", f"import ddp_harness; ddp_harness.rank_main({rank}, "
                                                         f"{str(spec_file)!r})"],
                                  env=env, stdout=logs[rank], stderr=subprocess.STDOUT, start_new_session=True)
                 for rank in range(WORLD_SIZE)]
    deadline = time.time() + timeout
    timed_out = False
    try:
        while any(p.poll() is None for p in processes):
            if time.time() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return Ranks([p.returncode for p in processes], outputs, out, timed_out)


def training_log(results: Path) -> str:
    logs = sorted(results.rglob("training_log_*.txt"))
    return "".join(p.read_text() for p in logs)
