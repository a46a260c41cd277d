"""The paper's protocol pieces used by the nnU-Net trainers (fast, no nnU-Net console commands)."""
import math
import subprocess
import sys

import json

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from nnunet_allukan.networks import network_summary

from nnunet_allukan.paper import SPLIT_SEEDS as PAPER_SPLIT_SEEDS
from nnunet_allukan.training import ka_unet_trainers, paper_protocol, trainers
from nnunet_allukan.training.architectures import plans_with_ukan_architecture
from nnunet_allukan.training.protocol import (
    ClosedFormCosineLRScheduler, binary_labels_as_region, cosine_annealing_lr, iterations_per_epoch,
    paper_splits_for_cases, round_up_patch_size, ukan_strides,
)
from nnunet_allukan.training.paper_protocol import PaperBCEDiceLoss, nnUNetTrainerPaperProtocol
from nnunet_allukan.training.trainers import nnUNetTrainerAllUKAN
from plans_helpers import build_from_plans, minimal_plans


def test_cosine_schedule_equals_torch_cosine_annealing_stepped_per_epoch():
    num_epochs, lr0, lr_min = 12, 1e-4, 1e-5
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_epochs, eta_min=lr_min)
    for epoch in range(num_epochs):
        assert cosine_annealing_lr(epoch, num_epochs, lr0, lr_min) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        optimizer.step()
        reference.step()
    assert cosine_annealing_lr(0, 400) == 1e-4
    assert cosine_annealing_lr(400, 400) == pytest.approx(1e-5)
    assert cosine_annealing_lr(1000, 400) == pytest.approx(1e-5)  # past the end: stays at the minimum
    with pytest.raises(ValueError):
        cosine_annealing_lr(-1, 400)


def test_scheduler_resumes_from_any_epoch_like_nnunet_continue_training():
    """nnU-Net calls lr_scheduler.step(current_epoch); a fresh scheduler after --c must give the same lr."""
    def lr_after(epochs_to_step):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        scheduler = ClosedFormCosineLRScheduler(optimizer, 1e-4, 1e-5, num_epochs=50)
        for epoch in epochs_to_step:
            scheduler.step(epoch)
        return optimizer.param_groups[0]["lr"]

    uninterrupted = [lr_after(range(e + 1)) for e in range(50)]
    resumed = [lr_after([e]) for e in range(50)]  # a new process that starts at epoch e
    assert uninterrupted == resumed
    assert uninterrupted == [cosine_annealing_lr(e, 50) for e in range(50)]
    assert all(a > b for a, b in zip(uninterrupted, uninterrupted[1:]))


def test_iterations_per_epoch_is_one_pass_of_the_reference_loaders():
    # training loader with drop_last: floor(n / 8); BUSI 517, CVC-ClinicDB 489, GlaS 132 training images
    assert iterations_per_epoch(517, 8) == 64
    assert iterations_per_epoch(489, 8) == 61
    assert iterations_per_epoch(132, 8) == 16
    assert iterations_per_epoch(9, 8) == 1
    assert iterations_per_epoch(3, 8) == 1  # smaller than one batch: still one step
    # validation loader without drop_last
    assert iterations_per_epoch(130, 8, drop_last=False) == 17
    assert iterations_per_epoch(8, 8, drop_last=False) == 1
    with pytest.raises(ValueError):
        iterations_per_epoch(0, 8)


def test_patch_size_rounded_up_to_multiples_of_32():
    assert round_up_patch_size([256, 256]) == [256, 256]
    assert round_up_patch_size([288, 384]) == [288, 384]
    assert round_up_patch_size([80, 100]) == [96, 128]
    assert round_up_patch_size([33, 1]) == [64, 32]
    assert round_up_patch_size([20, 64, 60], [4, 32, 32]) == [20, 64, 64]


def test_3d_strides_are_the_first_five_planned_down_samplings():
    planned = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert ukan_strides(planned, 3) == [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    small = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # a 32^3 patch: three down-samplings planned
    assert ukan_strides(small, 3) == [[2, 2, 2]] * 3 + [[1, 1, 1]] * 2
    assert ukan_strides(None, 2) == [[2, 2]] * 5


def test_2d_plans_get_paper_batch_size_rounded_patch_and_the_architecture_entry():
    plans = minimal_plans("2d", [80, 100])
    new_plans, messages = plans_with_ukan_architecture(plans, "2d", "allukan", embed_dims=(16, 24, 32))
    entry = new_plans["configurations"]["2d"]
    assert entry["patch_size"] == [96, 128] and entry["batch_size"] == 8
    architecture = entry["architecture"]
    assert architecture["network_class_name"] == "nnunet_allukan.networks.ukan.UKAN"
    assert architecture["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv2d"
    assert architecture["arch_kwargs"]["fc_op"] == "nnunet_allukan.layers.ka.KALinear"
    assert architecture["arch_kwargs"]["strides"] == [[2, 2]] * 5
    assert json.loads(json.dumps(new_plans)) == new_plans  # plans.json round trip
    assert any("[80, 100]" in m and "[96, 128]" in m for m in messages)
    assert plans["configurations"]["2d"]["patch_size"] == [80, 100]  # the caller's plans are not modified
    assert new_plans["continue_training"] is False
    network = build_from_plans(new_plans, "2d")
    summary = network_summary(network)
    assert (summary["KAConv"], summary["KALinear"], summary["Conv"]) == (31, 12, 0)
    assert network(torch.randn(1, 2, 96, 128)).shape == (1, 3, 96, 128)


def test_3d_plans_follow_the_planned_down_sampling():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    plans = minimal_plans("3d_fullres", [16, 32, 32], strides=strides)
    new_plans, messages = plans_with_ukan_architecture(plans, "3d_fullres", "ukan_mlp", embed_dims=(16, 24, 32))
    entry = new_plans["configurations"]["3d_fullres"]
    assert entry["patch_size"] == [16, 32, 32] and entry["batch_size"] == 8
    assert entry["architecture"]["arch_kwargs"]["strides"] == [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1],
                                                               [1, 1, 1]]
    assert entry["architecture"]["arch_kwargs"]["norm_op"] == "torch.nn.modules.batchnorm.BatchNorm3d"
    assert any("strides per stage" in m for m in messages)
    network = build_from_plans(new_plans, "3d_fullres", 1, 2)
    assert network(torch.randn(2, 1, 16, 32, 32)).shape == (2, 2, 16, 32, 32)


@pytest.mark.parametrize("fold", [3, 4, -1, "all"])
def test_folds_other_than_0_1_2_are_a_clear_error_and_write_nothing(fold, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    with pytest.raises(ValueError, match="folds 0, 1, 2"):
        nnUNetTrainerAllUKAN(minimal_plans("2d", [64, 64]), "2d", fold, {"labels": {"background": 0, "x": 1}},
                             torch.device("cpu"))
    assert not (tmp_path / "results").exists()


def test_binary_dataset_becomes_one_sigmoid_region_in_nnunet_label_manager():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset_json = {"labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}
    converted = binary_labels_as_region(dataset_json)
    assert dataset_json["labels"]["lesion"] == 1  # input untouched
    manager = LabelManager(converted["labels"], converted.get("regions_class_order"))
    assert manager.has_regions and manager.num_segmentation_heads == 1
    logits = torch.tensor([[[-3.0, -0.01], [0.01, 4.0]]])  # [1 head, 2, 2]
    segmentation = manager.convert_logits_to_segmentation(logits)
    assert segmentation.tolist() == [[0, 0], [1, 1]]  # sigmoid > 0.5 <=> logit > 0


def test_several_foreground_labels_stay_softmax_with_k_plus_1_outputs():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset_json = {"labels": {"background": 0, "gland": 1, "tumour": 2}}
    converted = binary_labels_as_region(dataset_json)
    assert converted == dataset_json
    manager = LabelManager(converted["labels"], converted.get("regions_class_order"))
    assert not manager.has_regions and manager.num_segmentation_heads == 3


def _reference_split(stems, seed):
    train, val = train_test_split(sorted(stems), test_size=0.2, random_state=seed)
    return train, val


def test_paper_splits_use_original_names_then_map_to_case_ids():
    original = {f"busi_{i:04d}": name for i, name in enumerate(
        [f"benign ({k})" for k in range(1, 31)] + [f"malignant ({k})" for k in range(1, 12)])}
    splits = paper_splits_for_cases(list(original), original)
    assert len(splits) == 3
    to_case = {v: k for k, v in original.items()}
    for split, seed in zip(splits, PAPER_SPLIT_SEEDS):
        train, val = _reference_split(original.values(), seed)
        assert split["train"] == [to_case[s] for s in train]
        assert split["val"] == [to_case[s] for s in val]
        assert len(split["val"]) == math.ceil(0.2 * len(original))
        assert not set(split["train"]) & set(split["val"])
    assert splits[0]["val"] != splits[1]["val"]


def test_paper_splits_fall_back_to_case_ids_and_reject_mismatched_original_ids():
    case_ids = [f"case_{i:03d}" for i in range(25)]
    splits = paper_splits_for_cases(case_ids[::-1])
    train, val = _reference_split(case_ids, PAPER_SPLIT_SEEDS[2])
    assert splits[2] == {"train": train, "val": val}
    with pytest.raises(ValueError, match="original_ids"):
        paper_splits_for_cases(case_ids, {c: c + "_x" for c in case_ids[:-1]})


def test_loss_is_half_bce_plus_one_minus_per_sample_dice():
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16)
    target = torch.rand(4, 1, 16, 16) > 0.6
    loss = PaperBCEDiceLoss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                            weight_ce=0.5, weight_dice=1)(logits, target)
    probabilities, t = torch.sigmoid(logits), target.float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
    intersection = (probabilities * t).sum((1, 2, 3))
    dice = (2 * intersection + 1e-5) / (probabilities.sum((1, 2, 3)) + t.sum((1, 2, 3)) + 1e-5)
    assert loss.item() == pytest.approx((0.5 * bce + 1 - dice.mean()).item(), rel=1e-6)


def test_every_trainer_is_exported_and_has_nnunet_init_signature():
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    defined = {obj.__name__ for module in (trainers, ka_unet_trainers, paper_protocol) for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__}
    assert defined == set(trainers.TRAINER_NAMES) - set(trainers.ALIASES)
    assert set(trainers.__all__) == set(trainers.TRAINER_NAMES) | {"__getattr__"}
    assert len(trainers.TRAINER_NAMES) == len(set(trainers.TRAINER_NAMES))
    expected = list(inspect.signature(nnUNetTrainer.__init__).parameters)
    for name in trainers.TRAINER_NAMES:
        trainer_class = getattr(trainers, name)
        assert list(inspect.signature(trainer_class.__init__).parameters) == expected, name
        suffix = name.rsplit("_", 1)[-1]
        if suffix.endswith(("epoch", "epochs")):
            assert trainer_class.epochs == int(suffix.split("epoch")[0]), name
            assert trainer_class.__init__ is trainer_class.__mro__[1].__init__  # a one-line variant


def test_protocol_base_names_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with pytest.raises(TypeError, match="names no network"):
        nnUNetTrainerPaperProtocol(minimal_plans("2d", [64, 64]), "2d", 0, {"labels": {"background": 0, "x": 1}},
                                   torch.device("cpu"))


def test_nnunet_finds_every_trainer_without_importing_timm():
    """Fresh interpreter, exactly nnU-Net's lookup (nnUNetv2_train -tr / nnUNetv2_predict)."""
    code = (
        "import sys\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
        "from nnunet_allukan.training import trainers\n"
        "names = trainers.TRAINER_NAMES\n"
        "for name in names:\n"
        "    cls = recursive_find_trainer_class_by_name(name)\n"
        "    assert cls is getattr(trainers, name) and cls.__module__.startswith('nnunet_allukan.training.'), cls\n"
        "    assert cls.__name__ == name or name in trainers.ALIASES, cls\n"
        "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules, 'timm/torchvision imported'\n"
        "print('ok', len(names))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"ok {len(trainers.TRAINER_NAMES)}"


def test_seed_everything_repeats_numpy_torch_and_random():
    import random

    from nnunet_allukan.training.protocol import seed_everything

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(2981)
    first = draw()
    seed_everything(2981)
    assert draw() == first


def test_a_model_folder_with_only_the_development_network_record_gets_a_clear_message():
    """A development version recorded its network as 'allukan_network'; 0.2.0 builds only from 'architecture'."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = minimal_plans("2d", [64, 64])
    plans["configurations"]["2d"]["allukan_network"] = {"class": "nnunet_allukan.networks.ALLUKAN",
                                                       "kwargs": {"embed_dims": [16, 24, 32]}}
    manager = PlansManager(plans)
    with pytest.raises(RuntimeError, match=r"'allukan_network' entry; nnunet-allukan 0\.2\.0 and later build "
                                           r"networks only from nnU-Net's 'architecture' entry\. Train the model again"):
        nnUNetTrainerAllUKAN.build_network_architecture(manager, manager.get_configuration("2d"), 3, 1, False)
