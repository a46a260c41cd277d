"""Activation plots (from a state_dict alone) and Fig. 5-style overlays."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_allukan.evaluation.activations import (
    activation_curves, bspline_bases, default_layer_selection, find_ka_layers, load_state_dict, select_layers)
from nnunet_allukan.commands.evaluation import plot_activations_main, plot_overlays_main
from nnunet_allukan.evaluation.collect import EvaluationError
from figure_helpers import assert_png_of


def assert_activation_panels(figure, layers: dict, n_outputs: int) -> None:
    """One row per layer (``{name: outputs}``), titled with the layer's name; ``n_outputs`` panels per row, a
    panel per shown output with the two curves, the zero line and the band, the rest switched off."""
    rows = figure.subfigs
    assert len(rows) == len(layers)
    for row, (name, outputs) in zip(rows, layers.items()):
        assert row._suptitle.get_text().startswith(f"{name}  [")
        axes = row.axes
        assert len(axes) == n_outputs
        drawn = [axis for axis in axes if axis.axison]
        shown = np.unique(np.linspace(0, outputs - 1, min(n_outputs, outputs)).round().astype(int))
        assert [axis.get_title() for axis in drawn] == [f"out {i}" for i in shown]
        for axis in drawn:
            lines = axis.get_lines()
            assert len(lines) == 3 and len(axis.collections) == 1  # phi, phi + mean u silu, zero line; the band
            assert np.ptp(lines[0].get_ydata()) > 0 and np.ptp(lines[1].get_ydata()) > 0


def ka_layers_module():
    """The project's KA layers, which the plots' numpy re-implementation is compared against."""
    from nnunet_allukan.layers import KAConv2d, KALinear, bspline_bases as torch_bases

    return KALinear, KAConv2d, torch_bases


def hand_made_state_dict(seed: int = 0) -> dict:
    """A state_dict shaped like ALL U-KAN's KA layers: a 3x3 conv, a depthwise conv, an fc, a final 1x1 conv,
    plus non-KA entries (BatchNorm) that must be ignored."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"encoder1.conv.0": (8, 3, 3, 3), "block1.layer.dwconv_1.dwconv": (16, 1, 3, 3),
              "block1.layer.fc1": (16, 16), "final": (1, 8, 1, 1)}
    state = {}
    for name, u_shape in shapes.items():
        state[f"{name}.u"] = torch.randn(*u_shape, generator=g) * 0.3
        state[f"{name}.v"] = torch.randn(u_shape[0], 8, generator=g)
        state[f"{name.rsplit('.', 1)[0]}.bn.running_mean"] = torch.zeros(u_shape[0])
    state["encoder1.norm.v"] = torch.zeros(8)  # a 1-D '.v' without '.u': not a KA layer
    return state


def test_numpy_bases_known_values():
    b = bspline_bases(np.array([0.0, -1.0, 2.2, -2.3]))
    assert b.shape == (4, 8)
    np.testing.assert_allclose(b[0] * 48, [0, 0, 1, 23, 23, 1, 0, 0], atol=1e-12)  # B(0), reference notes sec. 2
    np.testing.assert_allclose(b[1] * 6, [1, 4, 1, 0, 0, 0, 0, 0], atol=1e-12)  # cubic bases at the knot -1
    assert b[2].sum() == 0 and b[3].sum() == 0  # zero outside [-2.2, 2.2)
    x = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(bspline_bases(x).sum(-1), 1.0, atol=1e-12)  # partition of unity on the grid


def test_plotted_bases_match_the_cox_de_boor_recursion():
    from nnunet_allukan.layers import bspline_bases_cox_de_boor

    x = np.linspace(-2.5, 2.5, 301)
    for grid_size, order, grid_range in ((5, 3, (-1.0, 1.0)), (4, 2, (-2.0, 1.0))):
        ours = bspline_bases(x, grid_size, order, grid_range)
        recursion = bspline_bases_cox_de_boor(torch.tensor(x), grid_size, order, grid_range)
        np.testing.assert_allclose(ours, recursion.numpy(), atol=1e-12)


def test_curves_equal_a_one_input_ka_layer():
    """With one input, y_i(x) = phi_i(x) + u[i,0] silu(x): the plotted curve must be the layer's response."""
    KALinear, _, _ = ka_layers_module()
    torch.manual_seed(0)
    layer = KALinear(1, 5).double()
    with torch.no_grad():
        layer.v.normal_()
    x = np.linspace(-1, 1, 51)
    expected = layer(torch.tensor(x)[:, None]).detach().numpy().T  # [5, 51]
    wrapped = torch.nn.Sequential(layer)
    found = find_ka_layers({k: t.detach().numpy() for k, t in wrapped.state_dict().items()})
    assert [w.name for w in found] == ["0"]
    curves = activation_curves(found[0], x, range(5))
    np.testing.assert_allclose(curves["low"], expected, atol=1e-6)
    np.testing.assert_allclose(curves["high"], expected, atol=1e-6)
    np.testing.assert_allclose(curves["mean_u"], expected, atol=1e-6)


def test_layer_discovery_and_selection():
    state = {k: t.numpy() for k, t in hand_made_state_dict().items()}
    layers = find_ka_layers(state)
    assert [l.name for l in layers] == ["encoder1.conv.0", "block1.layer.dwconv_1.dwconv", "block1.layer.fc1", "final"]
    assert [l.kind for l in layers] == ["KAonv 3x3", "KAonv depthwise 3x3", "KA (fc)", "KAonv 1x1"]
    assert [l.name for l in default_layer_selection(layers)] == [l.name for l in layers]
    assert [l.name for l in select_layers(layers, ["block1.*"])] == ["block1.layer.dwconv_1.dwconv",
                                                                     "block1.layer.fc1"]
    with pytest.raises(EvaluationError, match="decoder9.*Available: encoder1.conv.0"):
        select_layers(layers, ["decoder9*"])
    # the band is the envelope of phi + u silu over the 5-95% range of u[i, :]
    x = np.linspace(-1, 1, 11)
    curves = activation_curves(layers[0], x, [2])
    u = layers[0].u.reshape(8, -1)[2]
    phi = layers[0].v[2] @ bspline_bases(x).T
    silu = x / (1 + np.exp(-x))
    edges = phi[None] + u[:, None] * silu[None]
    np.testing.assert_allclose(curves["phi"][0], phi)
    np.testing.assert_allclose(curves["mean_u"][0], edges.mean(0))
    assert np.all(curves["low"][0] <= np.median(edges, 0) + 1e-12)
    assert np.all(curves["high"][0] >= np.median(edges, 0) - 1e-12)
    with pytest.raises(EvaluationError, match="grid size 4"):
        activation_curves(layers[0], x, [0], grid_size=4)
    # another basis family: its own bases (ChebyKAN's T_k(tanh x) on the default range)
    chebyshev = np.cos(np.arange(8)[None, :] * np.arccos(np.tanh(x))[:, None])
    np.testing.assert_allclose(activation_curves(layers[0], x, [2], basis="chebyshev")["phi"][0],
                               layers[0].v[2] @ chebyshev.T, atol=1e-12)


def test_activation_command_from_nnunet_checkpoint(tmp_path, monkeypatch, capsys, saved_figures):
    fold = tmp_path / "results" / "Dataset601_BUSI" / "nnUNetTrainerAllUKAN__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"network_weights": hand_made_state_dict(), "trainer_name": "nnUNetTrainerAllUKAN",
                "init_args": {"fold": 0}}, fold / "checkpoint_final.pth")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    plot_activations_main(["-d", "601", "-tr", "nnUNetTrainerAllUKAN", "-n", "4"])
    png = fold / "activations_checkpoint_final.png"
    out = capsys.readouterr().out
    assert str(png) in out and "block1.layer.fc1" in out
    (figure, dpi), = saved_figures
    assert_png_of(png, figure, dpi)
    assert_activation_panels(figure, {"encoder1.conv.0": 8, "block1.layer.dwconv_1.dwconv": 16,
                                      "block1.layer.fc1": 16, "final": 1}, n_outputs=4)
    plot_activations_main(["-i", str(fold / "checkpoint_final.pth"), "--list"])
    assert "final: u (1, 8, 1, 1), v (1, 8)" in capsys.readouterr().out
    # a plain state_dict file works too; explicit output and layer patterns
    torch.save(hand_made_state_dict(), tmp_path / "weights.pth")
    plot_activations_main(["-i", str(tmp_path / "weights.pth"), "--layers", "final", "-o", str(tmp_path / "a.png")])
    figure, dpi = saved_figures[-1]
    assert_png_of(tmp_path / "a.png", figure, dpi)
    assert_activation_panels(figure, {"final": 1}, n_outputs=8)


def test_activation_command_reads_the_grid_from_the_model_folder(tmp_path, monkeypatch, capsys, saved_figures):
    """A model trained on another spline grid is plotted on that grid, read from the model folder's plans.json."""
    from nnunet_allukan.training.architectures import plans_with_ukan_architecture
    from plans_helpers import build_from_plans, minimal_plans

    plans, _ = plans_with_ukan_architecture(minimal_plans("2d", [64, 64]), "2d", "allukan", embed_dims=(16, 24, 32),
                                            grid_size=4, spline_order=2, grid_range=(-2.0, 2.0))
    model = tmp_path / "results" / "Dataset601_BUSI" / "nnUNetTrainerAllUKAN__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    network = build_from_plans(plans, "2d", 3, 1)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerAllUKAN"},
               model / "fold_0" / "checkpoint_final.pth")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    plot_activations_main(["-d", "601", "-tr", "nnUNetTrainerAllUKAN", "-n", "2"])
    assert f"Spline grid: grid size 4, order 2, range -2 2 (from {model / 'plans.json'})" in capsys.readouterr().out
    (figure, dpi), = saved_figures
    assert_png_of(model / "fold_0" / "activations_checkpoint_final.png", figure, dpi)
    assert len(figure.subfigs) == 4
    # options that contradict the recorded grid are refused, nothing written
    with pytest.raises(SystemExit) as exit_info:
        plot_activations_main(["-d", "601", "-tr", "nnUNetTrainerAllUKAN", "--grid-size", "5",
                               "-o", str(tmp_path / "x.png")])
    assert exit_info.value.code == 1
    assert "--grid-size 5 contradicts the grid the model was trained with" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    # outside a model folder the options say it
    torch.save(network.state_dict(), tmp_path / "weights.pth")
    plot_activations_main(["-i", str(tmp_path / "weights.pth"), "--grid-size", "4", "--spline-order", "2",
                           "--grid-range", "-2", "2", "-o", str(tmp_path / "w.png")])
    assert "Spline grid: grid size 4, order 2, range -2 2 (as given)" in capsys.readouterr().out


def test_recorded_grid_of_each_architecture_kind():
    from nnunet_allukan.evaluation.activations import recorded_grid

    paper = {"grid_size": 5, "spline_order": 3, "grid_range": (-1.0, 1.0), "basis": "bspline"}
    assert recorded_grid({"arch_kwargs": {"conv_kwargs": {}, "fc_kwargs": {}}}) == paper  # the layers' defaults
    ka_unet = {"arch_kwargs": {"ka_kwargs": {"grad_free": True, "grid_size": 7}}}  # nnUNetTrainerKAUNet's entry
    assert recorded_grid(ka_unet) == {**paper, "grid_size": 7}
    ukan = {"arch_kwargs": {"conv_kwargs": {"grid_range": [-2, 2]}, "fc_kwargs": {"grid_range": [-2.0, 2.0]}}}
    assert recorded_grid(ukan) == {**paper, "grid_range": (-2.0, 2.0)}
    rbf = {"arch_kwargs": {"ka_kwargs": {"grad_free": True, "basis": "rbf"}}}  # nnUNetTrainerKAUNet_rbf's entry
    assert recorded_grid(rbf) == {**paper, "basis": "rbf"}
    mixed = {"arch_kwargs": {"conv_kwargs": {"spline_order": 2}, "fc_kwargs": {"spline_order": 3}}}
    with pytest.raises(EvaluationError, match="two different spline_order values"):
        recorded_grid(mixed, "plans.json")


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found"),
    (b"garbage", "cannot be loaded as a PyTorch checkpoint"),
    ({"network_weights": {"conv.weight": torch.zeros(2, 2)}}, "no KA / KAonv layers found"),
])
def test_activation_command_errors(tmp_path, capsys, content, message):
    path = tmp_path / "c.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(SystemExit) as exit_info:
        plot_activations_main(["-i", str(path), "-o", str(tmp_path / "out.png")])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists() and not list(tmp_path.glob(".out.tmp-*"))


def make_overlay_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    name = "Dataset601_BUSI"
    for case_index in range(6):
        case = f"case_{case_index}"
        gt = np.zeros((40, 48), np.uint8)
        gt[10:25, 12 + case_index:30] = 1
        labels = root / "preprocessed" / name / "gt_segmentations"
        labels.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(labels / f"{case}.png")
        images = root / "raw" / name / "imagesTr"
        images.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{case}_0000.png")
        for shift, trainer in enumerate(("nnUNetTrainerUKAN", "nnUNetTrainerAllUKAN")):
            validation = root / "results" / name / f"{trainer}__nnUNetPlans__2d" / "fold_0" / "validation"
            validation.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(gt, shift * case_index, axis=0)).save(validation / f"{case}.png")
    (root / "raw" / name / "dataset.json").write_text(json.dumps({"file_ending": ".png"}))


def assert_overlay_panels(figure, root: Path, cases: list[str], methods: list[str]) -> None:
    """A row per case (labelled with it): the image, the ground truth over it, each method's prediction over it
    (titled with its IoU), each overlay changing exactly the pixels of its mask."""
    name = "Dataset601_BUSI"
    axes = np.array(figure.axes).reshape(len(cases), 2 + len(methods))
    for row, case in zip(axes, cases):
        assert row[0].get_ylabel() == case
        image = np.asarray(Image.open(root / "raw" / name / "imagesTr" / f"{case}_0000.png"), float)
        image /= image.max()  # shown scaled to [0, 1]
        masks = [np.asarray(Image.open(root / "preprocessed" / name / "gt_segmentations" / f"{case}.png")) > 0]
        masks += [np.asarray(Image.open(root / "results" / name / f"{m}__nnUNetPlans__2d" / "fold_0" / "validation" /
                                        f"{case}.png")) > 0 for m in methods]
        np.testing.assert_allclose(row[0].images[0].get_array(), image, atol=1e-6)
        for axis, mask in zip(row[1:], masks):
            changed = np.abs(np.asarray(axis.images[0].get_array(), float) - image).max(-1) > 1e-6
            np.testing.assert_array_equal(changed, mask)
    assert [axis.get_title() for axis in axes[0][:2]] == ["image", "ground truth"]
    for column, method in zip(axes[:, 2:].T, methods):
        assert all(f"{method}\nIoU " in axis.get_title() for axis in column)


def test_overlay_command(tmp_path, monkeypatch, capsys, saved_figures):
    make_overlay_tree(tmp_path)
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    plot_overlays_main(["-d", "601", "-tr", "nnUNetTrainerUKAN", "nnUNetTrainerAllUKAN", "-n", "3"])
    png = tmp_path / "results" / "Dataset601_BUSI" / "allukan_figures" / "overlays_fold0.png"
    out = capsys.readouterr().out
    assert str(png) in out and "case_0, case_2, case_5" in out  # evenly spaced
    (figure, dpi), = saved_figures
    assert_png_of(png, figure, dpi)
    assert_overlay_panels(figure, tmp_path, ["case_0", "case_2", "case_5"],
                          ["nnUNetTrainerUKAN", "nnUNetTrainerAllUKAN"])
    plot_overlays_main(["-d", "601", "-tr", "nnUNetTrainerUKAN", "nnUNetTrainerAllUKAN", "-n", "2",
                        "--select", "disagreement", "--style", "contour", "-o", str(tmp_path / "d.png")])
    assert "Cases: case_4, case_5" in capsys.readouterr().out  # the largest shifts of the second method
    # plain folders
    res = tmp_path / "results" / "Dataset601_BUSI"
    plot_overlays_main(["--pred", "A", str(res / "nnUNetTrainerUKAN__nnUNetPlans__2d" / "fold_0" / "validation"),
                        "-l", str(tmp_path / "preprocessed" / "Dataset601_BUSI" / "gt_segmentations"),
                        "-i", str(tmp_path / "raw" / "Dataset601_BUSI" / "imagesTr"), "--cases", "case_1",
                        "-o", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").is_file()
    # errors: unknown case, missing image
    with pytest.raises(SystemExit):
        plot_overlays_main(["-d", "601", "-tr", "nnUNetTrainerUKAN", "--cases", "case_9", "-o", str(tmp_path / "e.png")])
    assert "no prediction of case(s) case_9" in capsys.readouterr().err
    (tmp_path / "raw" / "Dataset601_BUSI" / "imagesTr" / "case_1_0000.png").unlink()
    with pytest.raises(SystemExit):
        plot_overlays_main(["-d", "601", "-tr", "nnUNetTrainerUKAN", "--cases", "case_1", "-o", str(tmp_path / "e.png")])
    assert "image of case case_1 not found" in capsys.readouterr().err
    assert not (tmp_path / "e.png").exists()


def test_allukan_state_dict_has_31_kaonv_and_12_ka_layers(tmp_path, saved_figures):
    """On the real network: all 43 KA layers are found from the state_dict alone, and plotted."""
    from nnunet_allukan.networks import ALLUKAN

    network = ALLUKAN(3, 1, embed_dims=(16, 32, 64))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerAllUKAN"}, tmp_path / "c.pth")
    layers = find_ka_layers(load_state_dict(tmp_path / "c.pth"))
    assert sum(l.u.ndim == 4 for l in layers) == 31 and sum(l.u.ndim == 2 for l in layers) == 12
    chosen = default_layer_selection(layers)
    assert [l.kind for l in chosen] == ["KAonv 3x3", "KAonv depthwise 3x3", "KA (fc)", "KAonv 1x1"]
    plot_activations_main(["-i", str(tmp_path / "c.pth"), "-n", "3", "-o", str(tmp_path / "a.png")])
    (figure, dpi), = saved_figures
    assert_png_of(tmp_path / "a.png", figure, dpi)
    assert_activation_panels(figure, {l.name: l.v.shape[0] for l in chosen}, n_outputs=3)


def test_gpu_script_is_valid_and_calls_declared_commands():
    """benchmarks/gpu_check.sh: bash syntax, and every project console command it calls is declared."""
    import re
    import subprocess

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"])
    called = set(re.findall(r"\b(nnUNetv2_allukan_\w+|nnUNetv2_convert_allukan_dataset)\b", script.read_text()))
    assert called and called <= declared, called - declared


@pytest.mark.parametrize("style", ["fill", "contour"])
def test_overlay_figure_has_a_legend_of_ground_truth_and_prediction(tmp_path, style):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from nnunet_allukan.evaluation.overlays import (GROUND_TRUTH_COLOUR, PREDICTION_COLOUR, OverlaySource,
                                                    overlay_figure)

    make_overlay_tree(tmp_path)
    name = "Dataset601_BUSI"
    source = OverlaySource(
        predictions={"A": tmp_path / "results" / name / "nnUNetTrainerUKAN__nnUNetPlans__2d" / "fold_0" / "validation"},
        labels=tmp_path / "preprocessed" / name / "gt_segmentations", images=tmp_path / "raw" / name / "imagesTr")
    figure, shown = overlay_figure(source, num_cases=2, style=style)
    try:
        assert len(figure.legends) == 1
        legend = figure.legends[0]
        labels = [text.get_text() for text in legend.get_texts()]
        assert labels[0].startswith("ground truth") and labels[1] == "prediction" and len(labels) == 2
        colours = [to_rgb(patch.get_facecolor()) for patch in legend.get_patches()]
        assert colours == [pytest.approx(GROUND_TRUTH_COLOUR), pytest.approx(PREDICTION_COLOUR)]
        assert len(shown) == 2
    finally:
        plt.close(figure)
