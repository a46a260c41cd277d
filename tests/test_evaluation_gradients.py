"""nnUNetv2_allukan_plot_gradients (paper Fig. 3b): G_S and G_L per layer, on fresh networks and a model folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from figure_helpers import assert_png_of
from nnunet_allukan.commands.evaluation import plot_gradients_main
from nnunet_allukan.evaluation.gradients import path_input_gradient, spline_and_silu_gradients
from nnunet_allukan.layers import KAConv2d, KALinear, KANLinear
from nnunet_allukan.networks import network_summary


@pytest.mark.parametrize("layer", [KALinear(5, 7), KAConv2d(3, 4, 3, padding=1), KAConv2d(4, 4, 3, padding=1,
                                                                                         groups=4), KANLinear(5, 3)])
def test_the_two_paths_add_up_to_the_full_input_gradient(layer):
    torch.manual_seed(0)
    layer = layer.double()
    shape = (6, 5) if isinstance(layer, (KALinear, KANLinear)) else (2, layer.in_channels, 6, 5)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        grad_output = torch.randn_like(layer(x))
    full_layer = layer
    full_layer.grad_free = False
    xf = x.clone().requires_grad_()
    (full,) = torch.autograd.grad((full_layer(xf) * grad_output).sum(), xf)
    spline = path_input_gradient(layer, x, grad_output, "spline")
    silu = path_input_gradient(layer, x, grad_output, "silu")
    torch.testing.assert_close(spline + silu, full)
    assert spline.abs().sum() > 0 and silu.abs().sum() > 0


def test_every_layer_of_a_network_is_measured():
    torch.manual_seed(0)
    from nnunet_allukan.networks import build_table2_network

    network = build_table2_network(13, 1, 1, embed_dims=(16, 24, 32))
    results = spline_and_silu_gradients(network, torch.randn(1, 1, 32, 32))
    assert len(results) == 43 and all(r.mean_abs_silu > 0 for r in results)
    assert {r.kind for r in results} == {"KAConv2d", "KALinear"}


def test_fresh_fig3b_writes_png_and_json(tmp_path, capsys, saved_figures):
    output = tmp_path / "fig3b.png"
    plot_gradients_main(["-o", str(output)])
    printed = capsys.readouterr().out
    assert "| 0 | KALinear |" in printed and "Wrote:" in printed
    record = json.loads(output.with_suffix(".json").read_text())
    assert [layer["kind"] for layer in record["layers"]] == ["KALinear"] * 3
    (figure, dpi), = saved_figures
    assert_png_of(output, figure, dpi)
    axis, = figure.axes  # a pair of bars per layer: |G_L| and |G_S| as in the JSON, the layers on the x axis
    silu, spline = axis.containers
    np.testing.assert_allclose([bar.get_height() for bar in silu], [l["mean_abs_silu"] for l in record["layers"]])
    np.testing.assert_allclose([bar.get_height() for bar in spline],
                               [l["mean_abs_spline"] for l in record["layers"]])
    assert [label.get_text() for label in axis.get_xticklabels()] == [str(l["layer"]) for l in record["layers"]]


def test_trained_model_folder(tmp_path, capsys):
    """A model folder as nnU-Net writes it: plans.json with the architecture entry, dataset.json, checkpoint."""
    from plans_helpers import build_from_plans, minimal_plans

    from nnunet_allukan.training.architectures import plans_with_ukan_architecture

    plans, _ = plans_with_ukan_architecture(minimal_plans("2d", [32, 32]), "2d", "allukan", embed_dims=(16, 24, 32))
    model = tmp_path / "nnUNetTrainerAllUKAN__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    dataset = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": [1, 1]},
               "regions_class_order": [1], "file_ending": ".png"}
    (model / "dataset.json").write_text(json.dumps(dataset))
    network = build_from_plans(plans, "2d", 3, 1)
    assert network_summary(network)["KAConv"] == 31
    torch.save({"network_weights": network.state_dict()}, model / "fold_0" / "checkpoint_final.pth")
    plot_gradients_main(["-i", str(model / "fold_0" / "checkpoint_final.pth")])
    assert "| final | KAConv2d |" in capsys.readouterr().out
    assert (model / "fold_0" / "gradients.png").is_file() and (model / "fold_0" / "gradients.json").is_file()


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_gradients_main(["--fresh", "3", "-o", str(tmp_path / "x.png")])
    assert exit_info.value.code == 1
    assert "unknown Table 2 row" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_gradients_main(["--fresh", "13", "--size", "40", "-o", str(tmp_path / "x.png")])
    assert "multiple of 32" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
