"""The trainers under nnU-Net's DDP (``nnUNetv2_train ... -num_gpus 2``): two CPU processes with gloo running
nnU-Net's per-rank entry ``run_ddp`` (tests/ddp_harness.py: only the backend, the CUDA device facts and
SyncBatchNorm are replaced, each by its CPU counterpart), on the end-to-end tests' tiny datasets.

- ``nnUNetTrainerAllUKAN`` 2D (paper protocol, SyncBatchNorm, the GPU memory estimate on rank 0) with nnU-Net's
  final validation; ``nnUNetTrainerKAUNet`` 2D (nnU-Net's torch.compile failing on both ranks: the eager fallback),
  continued with ``--c``, and 3D: no hang, the same parameters on both ranks after every step, the gradients of one
  process on the same global batch.
- A NaN in rank 1's batch (3D run, step 2) stops both ranks at the same step with the message in rank 0's log.
- Every trainer name takes its DDP behaviour from one of the two bases run here, and every network of them gives
  each parameter a gradient (DDP, as nnU-Net sets it up, fails on an unused parameter).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ddp_harness import WORLD_SIZE, run_two_ranks, training_log
from e2e_datasets import DISC_ID, SPHERES_ID

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")]

TIMEOUT = 300  # seconds for both ranks of one run; a hang (mismatched collectives) ends there
KAUNET_SHORT = {"num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _run(nnunet_datasets, tmp_path_factory, name: str, spec: dict, results: Path | None = None):
    results = results or tmp_path_factory.mktemp(f"ddp_results_{name}")
    env = dict(nnunet_datasets, nnUNet_results=str(results))
    ranks = run_two_ranks(dict(spec, fold=0), env, tmp_path_factory.mktemp(f"ddp_ranks_{name}"), TIMEOUT)
    return ranks, results


def _finished(ranks) -> None:
    assert not ranks.timed_out, f"the ranks hung (killed after {TIMEOUT} s):\n{ranks.tails()}"
    assert ranks.returncodes == [0] * WORLD_SIZE, ranks.tails()


def _global_batch(records: list[dict], step: int) -> dict:
    """The batch one process would see: the ranks' batches of ``step``, rank 0's first."""
    batches = [record["batches"][step] for record in records]
    targets = [b["target"] for b in batches]
    target = ([torch.cat(t) for t in zip(*targets)] if isinstance(targets[0], list) else torch.cat(targets))
    return {"data": torch.cat([b["data"] for b in batches]), "target": target,
            "keys": [k for b in batches for k in b["keys"]]}


def _single_process_gradients(nnunet_datasets, monkeypatch, tmp_path, dataset: int, configuration: str,
                              trainer_name: str, records: list[dict]) -> list[torch.Tensor | None]:
    """The trainer in this process (no DDP, CPU), from the parameters rank 0 had before step 0, one train_step on
    the global batch of step 0: the gradients handed to the optimizer."""
    from nnunetv2.run.run_training import get_trainer_from_args

    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(name, nnunet_datasets[name])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "single_process"))
    monkeypatch.setenv("nnUNet_compile", "f")
    trainer = get_trainer_from_args(str(dataset), configuration, 0, trainer_name, "nnUNetPlans", False,
                                    device=torch.device("cpu"))
    trainer.initialize()
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        for p, start in zip(params, records[0]["steps"][0]["params"], strict=True):
            p.copy_(start)
    gradients = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: gradients.extend(
        None if p.grad is None else p.grad.detach().clone() for p in params))
    trainer.train_step(_global_batch(records, 0))
    return gradients


def _assert_ranks_in_step(records: list[dict]) -> None:
    """Each rank's parameters before every optimizer step and at the end are rank 0's, exactly; so are the
    (all-reduced) gradients of the recorded steps."""
    zero, one = records
    assert len(zero["steps"]) == len(one["steps"]) >= 2
    for a, b in zip(zero["steps"], one["steps"]):
        if a is not None:
            for x, y in zip(a["params"] + a["grads"], b["params"] + b["grads"], strict=True):
                assert (x is None and y is None) or torch.equal(x, y)
    assert zero["final"].keys() == one["final"].keys()
    for key in zero["final"]:
        assert torch.equal(zero["final"][key], one["final"][key]), key


def _assert_gradients_equal(ddp: list[torch.Tensor], single: list[torch.Tensor | None]) -> None:
    """Within float32's reach: in one process ALL U-KAN's gradients differ from float64's by up to 0.3 % (norm of the
    difference per tensor; 0.15 % median), DDP's from float64's by as much; BatchNorm without the exchange across
    ranks would differ by over 100 %. A parameter without gradient in one process (nnU-Net gives the lowest deep
    supervision output weight 0 there, 1e-6 under DDP) must have a negligible one under DDP."""
    assert len(ddp) == len(single)
    scale = max(float(b.norm()) for b in single if b is not None)
    for index, (a, b) in enumerate(zip(ddp, single)):
        b = torch.zeros_like(a) if b is None else b
        assert float((a - b).norm()) <= 1e-2 * float(b.norm()) + 1e-5 * scale, index


# ------------------------------------------------------------------------------------------------- ALL U-KAN, 2D

@pytest.fixture(scope="module")
def allukan_2d(nnunet_datasets, tmp_path_factory):
    """nnUNetTrainerAllUKAN (1 epoch: 4 steps of the paper's batch 8, 4 per rank) through run_ddp, with the final
    validation."""
    ranks, results = _run(nnunet_datasets, tmp_path_factory, "allukan_2d",
                          {"dataset": DISC_ID, "configuration": "2d", "trainer": "nnUNetTrainerAllUKAN_1epoch"})
    _finished(ranks)
    return ranks, results


def test_allukan_memory_estimate_runs_on_rank_0_without_meeting_the_other_ranks(allukan_2d):
    """The estimate runs where the device is CUDA (here the harness' CPU that reports CUDA) and on rank 0 only: on a
    network of its own with plain BatchNorm, not through the SyncBatchNorm layers of the DDP network (whose
    exchange, made by rank 0 alone while rank 1 is in its first DDP forward, hangs)."""
    ranks, results = allukan_2d
    log = training_log(results)
    assert log.count("GPU memory estimate for Table 2 row 13 (allukan), patch [64, 64], batch 4 on this GPU (of 8): "
                     "about ") == 1
    assert "the GPU has 70.0 GiB free of 80.0 GiB" in log


def test_the_memory_message_under_ddp_names_this_gpus_share_of_the_batch():
    from nnunet_allukan.training.memory import GIB, MemoryEstimate, memory_message

    fits, line = memory_message(MemoryEstimate(int(0.3 * GIB), int(6 * GIB), 4, 23 * GIB, 24 * GIB),
                                "Table 2 row 9 (kaonv)", [256, 256], global_batch=8)
    assert not fits and "patch [256, 256], batch 4 on this GPU (of 8): about 24.3 GiB" in line
    assert "about 3 would fit, but the paper's protocol uses 4 on this GPU (of 8)" in line


def test_allukan_ranks_stay_identical_and_draw_their_own_batches(allukan_2d):
    ranks, _ = allukan_2d
    records = [ranks.record(rank) for rank in range(WORLD_SIZE)]
    _assert_ranks_in_step(records)
    assert len(records[0]["steps"]) == 4  # floor(32 training cases / 8) steps of the global batch 8
    assert [len(b["keys"]) for b in records[0]["batches"][:1] + records[1]["batches"][:1]] == [4, 4]
    # the fold's seed is the same on every rank; the ranks after 0 are reseeded for their data
    assert records[0]["batches"][0]["keys"] != records[1]["batches"][0]["keys"]


def test_allukan_gradients_equal_one_process_on_the_global_batch(allukan_2d, nnunet_datasets, monkeypatch, tmp_path):
    """DDP's averaged gradients (SyncBatchNorm statistics over both ranks) = one process on both ranks' batches."""
    ranks, _ = allukan_2d
    records = [ranks.record(rank) for rank in range(WORLD_SIZE)]
    single = _single_process_gradients(nnunet_datasets, monkeypatch, tmp_path, DISC_ID, "2d",
                                       "nnUNetTrainerAllUKAN_1epoch", records)
    _assert_gradients_equal(records[0]["steps"][0]["grads"], single)


def test_allukan_logs_checkpoints_and_final_validation_are_written_once(allukan_2d):
    ranks, results = allukan_2d
    fold = results / "Dataset987_AllUKANDiscs" / "nnUNetTrainerAllUKAN_1epoch__nnUNetPlans__2d" / "fold_0"
    assert len(list(fold.glob("training_log_*.txt"))) == 1
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    log = training_log(results)
    assert log.count("Training done.") == 1 and log.count("Mean Validation Dice") == 1
    splits = json.loads((fold.parent / "splits_allukan_paper.json").read_text())
    assert sorted(p.name for p in (fold / "validation").glob("*.png")) == sorted(f"{k}.png" for k in splits[0]["val"])


# ------------------------------------------------------------------------------------------ KA nnU-Net, 2D and 3D

@pytest.fixture(scope="module")
def kaunet_2d(nnunet_datasets, tmp_path_factory):
    """nnUNetTrainerKAUNet 2D, 1 epoch of 2 steps (nnU-Net's batch 2: 1 per rank), without the final validation;
    nnU-Net compiles the network and the Dice loss, and both fail to compile in the first forward on both ranks."""
    ranks, results = _run(nnunet_datasets, tmp_path_factory, "kaunet_2d",
                          {"dataset": DISC_ID, "configuration": "2d", "trainer": "nnUNetTrainerKAUNet_1epoch",
                           "trainer_settings": KAUNET_SHORT, "final_validation": False, "compile_fails": True})
    _finished(ranks)
    return ranks, results


def test_kaunet_falls_back_to_eager_on_both_ranks_when_compiling_fails(kaunet_2d):
    """Both ranks redo step 0 eagerly and train on (ranks identical: test below); the eager loss is nnU-Net's for an
    eager DDP network, or the lowest deep supervision output's parameters would get no gradient and DDP would stop
    at step 1."""
    ranks, results = kaunet_2d
    log = training_log(results)
    assert log.count("Using torch.compile...") == 1
    assert log.count("WARNING: torch.compile failed in a training step (torch._dynamo.exc.BackendCompilerFailed: "
                     "AssertionError: synthetic code generation failure (DDP test harness)") == 1
    assert "Continuing with the eager network and loss.loss.dc for the rest of this run" in log
    assert [len(ranks.record(rank)["steps"]) for rank in range(WORLD_SIZE)] == [2, 2]


def test_under_ddp_a_compile_failure_after_the_gradient_reduction_began_ends_the_run(tmp_path, monkeypatch):
    """The branch of a network compiled into several graphs whose backward fails after DDP received a gradient
    (no DDP here: ``is_ddp`` set by hand, the failure made by a compiled forward that leaves gradients behind)."""
    from torch._dynamo.exc import BackendCompilerFailed

    from nnunet_allukan.training import trainers
    from nnunet_allukan.training.nan_guard import FiniteLossGuard
    from plans_helpers import build_from_plans, minimal_plans

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    plans = minimal_plans("2d", [32, 32], strides=[[1, 1], [2, 2]])
    plans["configurations"]["2d"]["batch_dice"] = True
    trainer = trainers.nnUNetTrainerKAUNet_smoke(plans, "2d", 0, {"labels": {"background": 0, "lesion": 1}},
                                                 torch.device("cpu"))
    network = build_from_plans(trainer.plans_manager.plans, "2d", 1, 2)
    trainer.enable_deep_supervision = False
    trainer.loss = FiniteLossGuard(trainer._build_loss())
    trainer.optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    trainer.network = torch.compile(network, backend="eager")
    trainer.is_ddp = True

    def forward(*args, **kwargs):
        for p in network.parameters():
            p.grad = torch.zeros_like(p)
        try:
            raise AssertionError("synthetic backward code generation failure")
        except AssertionError as error:
            raise BackendCompilerFailed(forward, error, None) from error

    trainer.network.forward = forward
    batch = {"data": torch.randn(2, 1, 32, 32), "target": torch.randint(0, 2, (2, 1, 32, 32)).float(),
             "keys": ["a", "b"]}
    with pytest.raises(SystemExit, match=r"^ERROR: torch.compile failed in a training step \(torch._dynamo.exc."
                                         r"BackendCompilerFailed: AssertionError: synthetic backward code generation "
                                         r"failure .*after DDP had begun reducing this step's gradients, so the step "
                                         r"cannot be redone eagerly: train with nnUNet_compile=f \(add --c"):
        trainer.train_step(batch)
    assert "after DDP had begun reducing" in "".join(p.read_text() for p in tmp_path.rglob("training_log_*.txt"))


@pytest.fixture(scope="module")
def kaunet_3d_nan(nnunet_datasets, tmp_path_factory):
    """nnUNetTrainerKAUNet 3D: steps 0 and 1 on both ranks, then a corrupt case (NaN) in rank 1's batch of step 2.
    Rank 0's loss stays finite there (instance norm, per-sample Dice: nothing of rank 1 reaches it)."""
    ranks, results = _run(nnunet_datasets, tmp_path_factory, "kaunet_3d",
                          {"dataset": SPHERES_ID, "configuration": "3d_fullres",
                           "trainer": "nnUNetTrainerKAUNet_1epoch", "final_validation": False,
                           "trainer_settings": dict(KAUNET_SHORT, num_iterations_per_epoch=3),
                           "nan": {"rank": 1, "step": 2}})
    assert not ranks.timed_out, f"the ranks hung (killed after {TIMEOUT} s):\n{ranks.tails()}"
    return ranks, results


@pytest.mark.parametrize("dimension", ["2d", "3d_fullres"])
def test_kaunet_ranks_stay_identical_and_match_one_process(dimension, request, nnunet_datasets, monkeypatch,
                                                           tmp_path):
    ranks, _ = request.getfixturevalue("kaunet_2d" if dimension == "2d" else "kaunet_3d_nan")
    records = [ranks.record(rank) for rank in range(WORLD_SIZE)]
    _assert_ranks_in_step(records)
    single = _single_process_gradients(nnunet_datasets, monkeypatch, tmp_path,
                                       DISC_ID if dimension == "2d" else SPHERES_ID, dimension,
                                       "nnUNetTrainerKAUNet_1epoch", records)
    _assert_gradients_equal(records[0]["steps"][0]["grads"], single)


def test_a_nan_on_rank_1_stops_both_ranks_with_the_message_in_rank_0s_log(kaunet_3d_nan):
    """Both ranks stop before the optimizer step of step 2 (each took steps 0 and 1); rank 0, whose loss was
    finite, writes which rank and case."""
    ranks, results = kaunet_3d_nan
    assert ranks.returncodes == [1, 1], ranks.tails()
    records = [ranks.record(rank) for rank in range(WORLD_SIZE)]
    assert [len(r["steps"]) for r in records] == [2, 2]
    case = records[1]["batches"][2]["keys"][0]
    log = training_log(results)
    expected = ("Training stopped: the loss became NaN in epoch 0 on rank 1 of 2 (every rank stopped at this step), "
                f"before the optimizer step (batch cases: rank 1: {case}). Likely cause: the batch of rank 1 itself "
                "holds NaN / infinite values: a preprocessed case is corrupt.")
    assert expected in log
    for output in ranks.outputs:
        assert f"ERROR: {expected}" in output
    assert not list(results.rglob("checkpoint_final.pth"))


def test_kaunet_continues_under_ddp_with_c(kaunet_2d, nnunet_datasets, tmp_path_factory):
    """--c on two ranks: both load checkpoint_final of the first run (epoch 1) and train epoch 1 of 2 from its
    weights."""
    first, results = kaunet_2d
    fold = results / "Dataset987_AllUKANDiscs" / "nnUNetTrainerKAUNet_1epoch__nnUNetPlans__2d" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ranks, _ = _run(nnunet_datasets, tmp_path_factory, "kaunet_2d_continued",
                    {"dataset": DISC_ID, "configuration": "2d", "trainer": "nnUNetTrainerKAUNet_1epoch",
                     "continue": True, "final_validation": False,
                     "trainer_settings": dict(KAUNET_SHORT, num_epochs=2)}, results=results)
    _finished(ranks)
    records = [ranks.record(rank) for rank in range(WORLD_SIZE)]
    _assert_ranks_in_step(records)
    start = dict(zip(records[0]["param_names"], records[0]["steps"][0]["params"], strict=True))
    assert all(torch.equal(value, checkpoint["network_weights"][name]) for name, value in start.items())
    log = training_log(results)
    assert log.count("Continuing training from") == 1
    assert "checkpoint_final.pth: epoch 1 of 2" in log
    assert log.count("Epoch 1") == 1 and log.count("Training done.") == 2
    assert len(list(fold.glob("training_log_*.txt"))) == 2  # one per run, both by rank 0


# ------------------------------------------------------------------------------ every trainer, through its base

def _tested_base(trainer: type) -> type:
    from nnunet_allukan.training.ka_unet_trainers import nnUNetTrainerKAUNet
    from nnunet_allukan.training.paper_protocol import nnUNetTrainerPaperProtocol

    return nnUNetTrainerPaperProtocol if issubclass(trainer, nnUNetTrainerPaperProtocol) else nnUNetTrainerKAUNet


# What runs under DDP: every method of the tested bases that nnU-Net's DDP path calls or that the project adds.
DDP_METHODS = ("initialize", "on_train_start", "run_training", "train_step", "validation_step", "on_train_end",
               "on_train_epoch_end", "on_validation_epoch_end", "_build_loss", "configure_optimizers", "do_split",
               "_do_i_compile", "_set_batch_size_and_oversample", "load_checkpoint", "save_checkpoint",
               "perform_actual_validation", "set_deep_supervision_enabled", "build_network_architecture",
               "print_to_log_file")


def _trainer_names():
    from nnunet_allukan.training.trainers import TRAINER_NAMES

    return TRAINER_NAMES


@pytest.mark.parametrize("name", _trainer_names())
def test_every_trainer_takes_its_ddp_path_from_a_base_run_here(name):
    from nnunet_allukan.training import trainers
    from nnunet_allukan.training.base import KATrainerBase

    trainer = getattr(trainers, name)
    base = _tested_base(trainer)
    assert issubclass(trainer, KATrainerBase)
    overridden = [m for m in DDP_METHODS if getattr(trainer, m) is not getattr(base, m)]
    assert not overridden, f"{name} overrides {overridden} of {base.__name__}: run it under DDP in this file"


def _networks():
    """(trainer, 2 or 3) for every network the trainers build: nnUNetTrainerKAUNet's and each Table 2 row's, in each
    dimension the row exists in."""
    from nnunet_allukan.networks import table2_row
    from nnunet_allukan.training import trainers

    rows = [getattr(trainers, f"nnUNetTrainerTable2Row{row}") for row in range(4, 14)]
    return [(trainers.nnUNetTrainerKAUNet, dimension) for dimension in (2, 3)] + [
        (trainer, dimension) for trainer in rows for dimension in (2, 3)
        if dimension in table2_row(trainer.table2_row).conv_ops]


@pytest.mark.parametrize("trainer,dimension", _networks(), ids=lambda v: v.__name__ if isinstance(v, type) else
                         f"{v}d")
def test_every_network_gives_each_parameter_a_gradient(trainer, dimension, tmp_path, monkeypatch):
    """DDP as nnU-Net sets it up (find_unused_parameters off) fails on a parameter without a gradient; the networks
    differ only in width from the trained ones (the paper's widths take long to build for rows 9 / 10)."""
    from nnunet_allukan.training.paper_protocol import nnUNetTrainerPaperProtocol
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from plans_helpers import minimal_plans

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    configuration, patch = ("2d", [32, 32]) if dimension == 2 else ("3d_fullres", [16, 32, 32])
    instance = trainer(minimal_plans(configuration, patch), configuration, 0,
                       {"labels": {"background": 0, "lesion": 1}}, torch.device("cpu"))
    architecture = instance.configuration_manager.configuration["architecture"]
    kwargs = dict(architecture["arch_kwargs"])
    if issubclass(trainer, nnUNetTrainerPaperProtocol):
        kwargs["embed_dims"] = [16, 24, 32]
    torch.manual_seed(0)
    network = get_network_from_plans(architecture["network_class_name"], kwargs, architecture["_kw_requires_import"],
                                     3, instance.label_manager.num_segmentation_heads,
                                     deep_supervision=instance.enable_deep_supervision)
    outputs = network(torch.randn(2, 3, *instance.configuration_manager.patch_size))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    sum(o.float().mean() for o in outputs).backward()
    missing = [n for n, p in network.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
