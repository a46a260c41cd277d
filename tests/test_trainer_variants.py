"""Table 2 row trainers and the reference recipe's kan_lr variants (in process, no console commands)."""
from __future__ import annotations

import pytest
import torch

from nnunet_allukan.networks import build_table2_network, network_summary
from nnunet_allukan.paper import KAN_FC_LR
from nnunet_allukan.training import trainers
from nnunet_allukan.training.protocol import ClosedFormCosineLRScheduler, cosine_annealing_lr, is_kan_fc_parameter
from plans_helpers import build_from_plans, minimal_plans

# Parameter totals with 3 input channels and 1 output (docs/networks.md's Table 2 column).
EXPECTED_PARAMETERS = {4: 2_764_561, 5: 6_356_689, 6: 2_779_345, 7: 6_356_689, 8: 2_779_345, 9: 27_492_064,
                       10: 27_492_064, 11: 2_806_120, 12: 2_842_547, 13: 2_806_120}


def make_trainer(name: str, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    plans = minimal_plans("2d", [64, 64])
    return getattr(trainers, name)(plans, "2d", 0, {"labels": {"background": 0, "lesion": 1}},
                                   torch.device("cpu"))


@pytest.mark.parametrize("row", range(4, 14))
def test_every_table2_row_trainer_builds_its_row(row, tmp_path, monkeypatch):
    trainer = make_trainer(f"nnUNetTrainerTable2Row{row}", tmp_path, monkeypatch)
    network = build_from_plans(trainer.plans_manager.plans, "2d", 3, 1)
    summary = network_summary(network)
    assert summary["parameters"] == EXPECTED_PARAMETERS[row]
    expected = network_summary(build_table2_network(row))
    assert {k: v for k, v in summary.items() if k != "class"} == {k: v for k, v in expected.items() if k != "class"}
    short = getattr(trainers, f"nnUNetTrainerTable2Row{row}_5epochs")
    assert short.epochs == 5 and issubclass(short, getattr(trainers, f"nnUNetTrainerTable2Row{row}"))


def test_rows_4_5_13_are_the_named_trainers_and_share_their_short_runs():
    assert trainers.nnUNetTrainerTable2Row4 is trainers.nnUNetTrainerUKAN_MLP
    assert trainers.nnUNetTrainerTable2Row5 is trainers.nnUNetTrainerUKAN
    assert trainers.nnUNetTrainerTable2Row13 is trainers.nnUNetTrainerAllUKAN
    for row, named in ((4, "nnUNetTrainerUKAN_MLP"), (5, "nnUNetTrainerUKAN"), (13, "nnUNetTrainerAllUKAN")):
        for suffix in ("1epoch", "5epochs", "100epochs"):
            assert getattr(trainers, f"nnUNetTrainerTable2Row{row}_{suffix}") is getattr(trainers, f"{named}_{suffix}")
    # one class per network and length: no separate row class, no second set of short runs
    classes = [getattr(trainers, name) for name in trainers.TRAINER_NAMES]
    assert not [c.__name__ for c in classes if c.__name__.startswith(("nnUNetTrainerTable2Row4",
                                                                      "nnUNetTrainerTable2Row5",
                                                                      "nnUNetTrainerTable2Row13"))]
    assert len(set(classes)) == len(trainers.TRAINER_NAMES) - len(trainers.ALIASES) == 109


def _reference_kan_lr_names(network: torch.nn.Module) -> set[str]:
    """The reference training script's selection, verbatim."""
    return {name for name, _ in network.named_parameters() if "layer" in name.lower() and "fc" in name.lower()}


@pytest.mark.parametrize("name,fc_parameters", [("nnUNetTrainerUKAN_kanlr", 36),
                                                ("nnUNetTrainerAllUKAN_kanlr", 24)])
def test_kanlr_variants_give_exactly_the_fc_layers_lr_1e2(name, fc_parameters, tmp_path, monkeypatch):
    trainer = make_trainer(name, tmp_path, monkeypatch)
    trainer.network = build_from_plans(trainer.plans_manager.plans, "2d", 3, 1)
    optimizer, scheduler = trainer.configure_optimizers()
    by_id = {id(p): n for n, p in trainer.network.named_parameters()}
    low, high = optimizer.param_groups
    assert low["lr"] == pytest.approx(1e-4) and high["lr"] == pytest.approx(KAN_FC_LR)
    high_names = {by_id[id(p)] for p in high["params"]}
    assert high_names == _reference_kan_lr_names(trainer.network)
    assert len(high_names) == fc_parameters  # 12 fc layers x (3 KANLinear tensors | u, v)
    assert all(".layer.fc" in n for n in high_names)
    assert len(low["params"]) + len(high["params"]) == len(list(trainer.network.parameters()))
    scheduler.step(10)
    assert high["lr"] == pytest.approx(cosine_annealing_lr(10, trainer.num_epochs, KAN_FC_LR))
    assert low["lr"] == pytest.approx(cosine_annealing_lr(10, trainer.num_epochs, 1e-4))


def test_plain_trainers_keep_one_lr(tmp_path, monkeypatch):
    trainer = make_trainer("nnUNetTrainerUKAN", tmp_path, monkeypatch)
    trainer.network = build_from_plans(trainer.plans_manager.plans, "2d", 3, 1)
    optimizer, _ = trainer.configure_optimizers()
    assert len(optimizer.param_groups) == 1


def test_reference_rule_is_the_reference_rule():
    assert is_kan_fc_parameter("block1.layer.fc1.base_weight")
    assert is_kan_fc_parameter("dblock2.layer.fc3.u")
    assert not is_kan_fc_parameter("block1.layer.dwconv_1.dwconv.u")
    assert not is_kan_fc_parameter("encoder1.0.weight")


def test_scheduler_anneals_each_group_from_its_own_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 1e-2}], lr=1e-4)
    reference_optimizer = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 1e-2}], lr=1e-4)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(reference_optimizer, T_max=20, eta_min=1e-5)
    scheduler = ClosedFormCosineLRScheduler(optimizer, 1e-4, 1e-5, 20)
    for epoch in range(20):
        scheduler.step(epoch)
        for group, reference_group in zip(optimizer.param_groups, reference_optimizer.param_groups):
            assert group["lr"] == pytest.approx(reference_group["lr"], rel=1e-9)
        reference_optimizer.step()
        reference.step()


def test_layer_options_reach_the_plans_and_the_network(tmp_path, monkeypatch):
    """A paper-protocol trainer's layer_options are recorded in the architecture entry nnU-Net builds from."""
    from nnunet_allukan.layers import KAConv2d, KALinear

    class nnUNetTrainerAllUKAN_grid4(trainers.nnUNetTrainerAllUKAN):
        layer_options = {"grid_size": 4, "spline_order": 2, "grid_range": (-2.0, 2.0)}

    monkeypatch.setattr(trainers, "nnUNetTrainerAllUKAN_grid4", nnUNetTrainerAllUKAN_grid4, raising=False)
    trainer = make_trainer("nnUNetTrainerAllUKAN_grid4", tmp_path, monkeypatch)
    arch_kwargs = trainer.plans_manager.plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    for entry in ("conv_kwargs", "fc_kwargs"):
        assert {k: arch_kwargs[entry][k] for k in ("grid_size", "spline_order", "grid_range")} == \
            {"grid_size": 4, "spline_order": 2, "grid_range": [-2.0, 2.0]}
    network = build_from_plans(trainer.plans_manager.plans, "2d", 3, 1)
    ka_layers = [m for m in network.modules() if isinstance(m, (KAConv2d, KALinear))]
    assert len(ka_layers) == 43
    assert {(m.grid_size, m.spline_order, tuple(m.grid_range)) for m in ka_layers} == {(4, 2, (-2.0, 2.0))}
    # the default: the paper's grid, recorded
    default = make_trainer("nnUNetTrainerAllUKAN", tmp_path, monkeypatch)
    fc_kwargs = default.plans_manager.plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["fc_kwargs"]
    assert (fc_kwargs["grid_size"], fc_kwargs["spline_order"], fc_kwargs["grid_range"]) == (5, 3, [-1.0, 1.0])


def test_a_misspelt_layer_option_is_refused(tmp_path, monkeypatch):
    class nnUNetTrainerAllUKAN_typo(trainers.nnUNetTrainerAllUKAN):
        layer_options = {"grid_sise": 4}

    monkeypatch.setattr(trainers, "nnUNetTrainerAllUKAN_typo", nnUNetTrainerAllUKAN_typo, raising=False)
    with pytest.raises(ValueError, match="layer options grid_sise are taken by no layer"):
        make_trainer("nnUNetTrainerAllUKAN_typo", tmp_path, monkeypatch)


def _predictor_build(trainer_class: type, plans: dict, deep_supervision: bool) -> torch.nn.Module:
    """The network as nnUNetPredictor rebuilds it: plans.json read back, the trainer class's
    build_network_architecture (nnU-Net 2.8's signature)."""
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(json.loads(json.dumps(plans)))
    return trainer_class.build_network_architecture(plans_manager, plans_manager.get_configuration("2d"), 3, 2,
                                                    enable_deep_supervision=deep_supervision)


@pytest.mark.parametrize("name, basis, order", [("nnUNetTrainerKAUNet_chebyshev", "chebyshev", 3),
                                                ("nnUNetTrainerAllUKAN_rbf", "rbf", 3),
                                                ("nnUNetTrainerKAUNet_bspline2", "bspline", 2)])
def test_basis_trainers_record_the_family_and_prediction_rebuilds_it(name, basis, order, tmp_path, monkeypatch):
    from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d, KALinear

    trainer = make_trainer(name, tmp_path, monkeypatch)
    plans = trainer.plans_manager.plans
    kwargs = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    recorded = [kwargs["ka_kwargs"]] if "ka_kwargs" in kwargs else [kwargs["conv_kwargs"], kwargs["fc_kwargs"]]
    assert all((entry.get("basis", "bspline"), entry.get("spline_order", 3)) == (basis, order) for entry in recorded)
    trained = _predictor_build(type(trainer), plans, trainer.enable_deep_supervision)  # as the trainer builds it
    predicted = _predictor_build(type(trainer), plans, deep_supervision=False)
    assert str(predicted) == str(trained)
    assert {k: v.shape for k, v in predicted.state_dict().items()} == {k: v.shape for k, v in
                                                                       trained.state_dict().items()}
    layers = [m for m in predicted.modules() if isinstance(m, (KAConv2d, KAConvTranspose2d, KALinear))]
    assert layers and {(m.basis, m.spline_order) for m in layers} == {(basis, order)}
    predicted.load_state_dict(trained.state_dict())
    # plans written before the basis option (no "basis" key) build the paper's B-splines
    for entry in recorded:
        entry.pop("basis", None)
    old = _predictor_build(type(trainer), plans, deep_supervision=False)
    assert {m.basis for m in old.modules() if isinstance(m, (KAConv2d, KALinear))} == {"bspline"}


def test_every_basis_trainer_is_listed_with_what_it_changes():
    from nnunet_allukan.commands.trainers import trainer_list

    listing = trainer_list()
    for base in ("nnUNetTrainerKAUNet", "nnUNetTrainerAllUKAN"):
        for suffix, (options, what) in trainers.BASIS_VARIANTS.items():
            trainer = getattr(trainers, f"{base}_{suffix}")
            assert f"{base}_{suffix}" in trainers.__all__ and what in listing
            recorded = trainer.ka_kwargs if base == "nnUNetTrainerKAUNet" else trainer.layer_options
            assert {k: recorded[k] for k in options} == options
