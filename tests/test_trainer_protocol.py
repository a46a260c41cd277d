"""The paper's protocol pieces used by the nnU-Net trainers (fast, no nnU-Net console commands)."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from nnunet_allukan.training import trainers
from nnunet_allukan.training.protocol import (
    PAPER_SPLIT_SEEDS, ClosedFormCosineLRScheduler, binary_labels_as_region, cosine_annealing_lr,
    iterations_per_epoch, paper_splits_for_cases, round_up_patch_size,
)
from nnunet_allukan.training.trainers import (
    NETWORK_PLANS_KEY, PaperBCEDiceLoss, nnUNetTrainerAllUKAN, plans_for_paper_protocol,
)


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


def test_iterations_per_epoch_is_one_pass():
    assert iterations_per_epoch(517, 8) == 65  # BUSI: 647 * 0.8 rounded by train_test_split
    assert iterations_per_epoch(8, 8) == 1
    assert iterations_per_epoch(9, 8) == 2
    assert iterations_per_epoch(3, 8) == 1
    with pytest.raises(ValueError):
        iterations_per_epoch(0, 8)


def test_patch_size_rounded_up_to_multiples_of_32():
    assert round_up_patch_size([256, 256]) == [256, 256]
    assert round_up_patch_size([288, 384]) == [288, 384]
    assert round_up_patch_size([80, 100]) == [96, 128]
    assert round_up_patch_size([33, 1]) == [64, 32]


def _minimal_plans(configuration: str, patch_size, batch_size=2):
    return {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "continue_training": False,
            "configurations": {configuration: {"patch_size": list(patch_size), "batch_size": batch_size,
                                               "architecture": {}, "data_identifier": "x"}}}


def test_plans_get_paper_batch_size_rounded_patch_and_network_record():
    plans = _minimal_plans("2d", [80, 100])
    new_plans, messages = plans_for_paper_protocol(plans, "2d", "some.module.Net", {"a": [1, 2]})
    entry = new_plans["configurations"]["2d"]
    assert entry["patch_size"] == [96, 128] and entry["batch_size"] == 8
    assert entry[NETWORK_PLANS_KEY] == {"class": "some.module.Net", "kwargs": {"a": [1, 2]}}
    assert any("[80, 100]" in m and "[96, 128]" in m for m in messages)
    assert plans["configurations"]["2d"]["patch_size"] == [80, 100]  # the caller's plans are not modified
    assert new_plans["continue_training"] is False


def test_3d_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="2D networks"):
        plans_for_paper_protocol(_minimal_plans("3d_fullres", [64, 64, 64]), "3d_fullres", "x.Net", {})


@pytest.mark.parametrize("fold", [3, 4, -1, "all"])
def test_folds_other_than_0_1_2_are_a_clear_error_and_write_nothing(fold, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    with pytest.raises(ValueError, match="folds 0, 1, 2"):
        nnUNetTrainerAllUKAN(_minimal_plans("2d", [64, 64]), "2d", fold, {"labels": {"background": 0, "x": 1}},
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

    defined = {name for name, obj in vars(trainers).items()
               if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == trainers.__name__}
    assert defined == set(trainers.__all__)
    expected = list(inspect.signature(nnUNetTrainer.__init__).parameters)
    for name in trainers.__all__:
        assert list(inspect.signature(getattr(trainers, name).__init__).parameters) == expected, name
    epochs = {"_1epoch": 1, "_5epochs": 5, "_10epochs": 10, "_20epochs": 20, "_50epochs": 50, "_100epochs": 100}
    for name in trainers.__all__:
        for suffix, n in epochs.items():
            if name.endswith(suffix):
                assert f"self.num_epochs = {n}" in inspect.getsource(getattr(trainers, name))


def test_nnunet_finds_every_trainer_without_importing_timm():
    """Fresh interpreter, exactly nnU-Net's lookup (nnUNetv2_train -tr / nnUNetv2_predict)."""
    code = (
        "import sys\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
        "from nnunet_allukan.training.trainers import __all__ as names\n"
        "for name in names:\n"
        "    cls = recursive_find_trainer_class_by_name(name)\n"
        "    assert cls.__name__ == name and cls.__module__ == 'nnunet_allukan.training.trainers', cls\n"
        "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules, 'timm/torchvision imported'\n"
        "print('ok', len(names))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"ok {len(trainers.__all__)}"


def test_seed_everything_repeats_numpy_torch_and_random():
    import random

    from nnunet_allukan.training.protocol import seed_everything

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(2981)
    first = draw()
    seed_everything(2981)
    assert draw() == first
