"""ALL U-KAN, U-KAN, U-KAN_MLP and the Table 2 family: counts, shapes, equivalences, learning."""
import pytest
import torch
import torch.nn.functional as F

from torch import nn

from nnunet_allukan.layers import KAConv2d, KAConv3d, KALinear, KANLinear
from nnunet_allukan.networks import (ALLUKAN, TABLE2_ROWS, UKAN, build_table2_network, network_summary)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_reference_parameter_counts():
    assert n_params(UKAN(3, 1)) == 6_356_689
    assert n_params(UKAN(3, 1, fc_op=nn.Linear)) == 2_764_561
    assert n_params(UKAN(3, 1, fc_op=KALinear)) == 2_779_345  # row 6: within 0.5% of the paper's 2.78M
    assert abs(n_params(build_table2_network(6)) / 2.78e6 - 1) < 0.005


def test_mlp_switch_reaches_every_block():
    net = UKAN(3, 1, fc_op=nn.Linear)
    s = network_summary(net)
    assert s["KANLinear"] == 0 and s["Linear"] == 12 and s["Conv"] == 31


def test_allukan_has_31_kaonv_and_12_ka_layers():
    net = ALLUKAN(3, 1)
    assert sum(isinstance(m, KAConv2d) for m in net.modules()) == 31
    assert sum(isinstance(m, KALinear) for m in net.modules()) == 12
    s = network_summary(net)
    assert (s["Conv"], s["Linear"], s["KANLinear"], s["KANConv"]) == (0, 0, 0, 0)
    assert s["parameters"] == 2_806_120
    # the 12 depthwise KAonv layers, the two stride-2 patch embeddings and the final 1x1 are KAonv too
    dw = [m for m in net.modules() if isinstance(m, KAConv2d) and m.groups == m.in_channels > 1]
    assert len(dw) == 12
    assert isinstance(net.patch_embed3.proj, KAConv2d) and net.patch_embed3.proj.stride == (2, 2)
    assert isinstance(net.final, KAConv2d) and net.final.kernel_size == (1, 1)


def test_every_table2_row_builds_with_the_right_layers():
    expected = {4: (0, 0, 0, 0, 31, 12), 5: (0, 0, 12, 0, 31, 0), 6: (0, 12, 0, 0, 31, 0), 7: (0, 0, 12, 0, 31, 0),
                8: (0, 12, 0, 0, 31, 0), 9: (0, 0, 12, 31, 0, 0), 10: (0, 0, 12, 31, 0, 0),
                11: (31, 12, 0, 0, 0, 0), 12: (31, 12, 0, 0, 0, 0), 13: (31, 12, 0, 0, 0, 0)}
    for row in TABLE2_ROWS.values():
        net = build_table2_network(row.row, embed_dims=(16, 24, 32))
        s = network_summary(net)
        assert (s["KAConv"], s["KALinear"], s["KANLinear"], s["KANConv"], s["Conv"], s["Linear"]) == expected[row.row]
        spline_layers = [m for m in net.modules() if hasattr(m, "grad_free")]
        expected_grad_free = {**row.conv_kwargs, **row.fc_kwargs}.get("grad_free", False)
        assert all(m.grad_free == expected_grad_free for m in spline_layers), row.name
    lam = build_table2_network("allukan_lambda", embed_dims=(16, 24, 32))
    assert all(m.lam is not None for m in lam.modules() if isinstance(m, (KAConv2d, KALinear)))
    assert n_params(build_table2_network(12)) - n_params(build_table2_network(13)) == 36_427


@pytest.mark.parametrize("cls,kw", [(ALLUKAN, {}), (UKAN, {}), (UKAN, dict(fc_op=nn.Linear))])
@pytest.mark.parametrize("c_in,n_cls,h,w", [(3, 1, 64, 64), (1, 3, 96, 64), (4, 2, 32, 160)])
def test_shapes(cls, kw, c_in, n_cls, h, w):
    net = cls(c_in, n_cls, embed_dims=(16, 24, 32), **kw)
    y = net(torch.randn(2, c_in, h, w))
    assert y.shape == (2, n_cls, h, w)


def test_full_width_256():
    net = ALLUKAN(3, 1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)


@pytest.mark.parametrize("shape", [(1, 3, 48, 64), (1, 3, 64, 100)])
def test_sides_not_divisible_by_32_fail_clearly(shape):
    with pytest.raises(ValueError, match=r"divisible by \[32, 32\]"):
        ALLUKAN(3, 1, embed_dims=(16, 24, 32))(torch.randn(*shape))


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="cannot tell the spatial dimension"):
        UKAN(3, 1, conv_op=nn.Linear)
    with pytest.raises(ValueError, match="no 3D version"):
        build_table2_network("kaonv", dim=3)
    with pytest.raises(ValueError, match="5 entries"):
        UKAN(3, 1, strides=[2, 2, 2])
    with pytest.raises(ValueError, match="deep supervision"):
        UKAN(3, 1, deep_supervision=True)
    with pytest.raises(ValueError, match="unknown Table 2 row"):
        build_table2_network(3)
    with pytest.raises(ValueError, match=r"expects \[B, 3"):
        ALLUKAN(3, 1, embed_dims=(16, 24, 32))(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("grad_free", [True, False])
def test_fast_and_reference_allukan_agree(grad_free):
    torch.manual_seed(0)
    fast = ALLUKAN(2, 2, embed_dims=(16, 24, 32), grad_free=grad_free, chunk_size=5).double()
    ref = ALLUKAN(2, 2, embed_dims=(16, 24, 32), grad_free=grad_free, implementation="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 2, 32, 64, dtype=torch.float64)
    g = torch.randn(2, 2, 32, 64, dtype=torch.float64)
    grads = []
    for net in (fast, ref):
        net.train()
        xi = x.clone().requires_grad_(True)
        y = net(xi)
        gs = torch.autograd.grad((y * g).sum(), [xi] + list(net.parameters()))
        grads.append((y, gs))
    # 43 layers with BatchNorm, ReLU and max-pooling amplify float64 round-off (the per-layer tests hold 1e-10).
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-8, atol=1e-8)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_table2_options_reach_only_the_layers_that_take_them():
    net = build_table2_network(13, embed_dims=(16, 24, 32), chunk_size=7, implementation="reference")
    kaonv = [m for m in net.modules() if isinstance(m, KAConv2d)]
    assert all(m.chunk_size == 7 and m.implementation == "reference" for m in kaonv)
    assert all(m.chunk_size == 7 for m in net.modules() if isinstance(m, KALinear))
    ukan = build_table2_network(5, embed_dims=(16, 24, 32), grad_free=True)  # KANLinear takes grad_free only
    assert all(m.grad_free for m in ukan.modules() if isinstance(m, KANLinear))


@pytest.mark.parametrize("row", [4, 5, 13])
def test_3d_networks_are_the_same_topology_with_3d_layers(row):
    net2d = build_table2_network(row, 1, 2, embed_dims=(16, 24, 32))
    net3d = build_table2_network(row, 1, 2, dim=3, embed_dims=(16, 24, 32))
    s2, s3 = network_summary(net2d), network_summary(net3d)
    assert {k: v for k, v in s2.items() if k not in ("class", "parameters")} == \
        {k: v for k, v in s3.items() if k not in ("class", "parameters")}
    assert not any(isinstance(m, (nn.Conv2d, KAConv2d, nn.BatchNorm2d)) for m in net3d.modules())
    x = torch.randn(2, 1, 32, 32, 32)
    assert net3d(x).shape == (2, 2, 32, 32, 32)


def test_3d_anisotropic_strides_pool_only_where_asked():
    strides = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    net = ALLUKAN(1, 3, embed_dims=(16, 24, 32), dim=3, strides=strides)
    assert net.divisors == (4, 32, 32)
    assert net.patch_embed4.proj.stride == (1, 2, 2) and isinstance(net.patch_embed4.proj, KAConv3d)
    y = net(torch.randn(1, 1, 8, 64, 32))  # the deepest map is 2 x 2 x 1: thinner than the 3x3x3 kernels
    assert y.shape == (1, 3, 8, 64, 32)
    y.sum().backward()
    with pytest.raises(ValueError, match=r"divisible by \[4, 32, 32\]"):
        net(torch.randn(1, 1, 6, 64, 32))


def _blobs(n, size, generator):
    """Bright discs on noise, one per image; returns images [n, 3, s, s] and masks [n, 1, s, s]."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs, masks = [], []
    for _ in range(n):
        cy, cx = torch.randint(12, size - 12, (2,), generator=generator)
        r = torch.randint(6, 12, (1,), generator=generator)
        m = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r ** 2).float()
        img = 0.6 * torch.randn(3, size, size, generator=generator) + 1.5 * m
        imgs.append(img)
        masks.append(m[None])
    return torch.stack(imgs), torch.stack(masks)


def _dice(logits, target):
    pred = (logits.sigmoid() > 0.5).float()
    return float(2 * (pred * target).sum() / (pred.sum() + target.sum()).clamp_min(1))


def test_allukan_learns_blobs():
    """A broken gradient path (u, v or the input path) keeps Dice far below 0.9 (seen: 0.93 after 60 steps)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ALLUKAN(3, 1, embed_dims=(16, 24, 32))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(90):
        x, y = _blobs(4, 64, gen)
        logits = net(x)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1e-5) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1e-5)
        loss = 0.5 * F.binary_cross_entropy_with_logits(logits, y) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = _blobs(16, 64, torch.Generator().manual_seed(123))
    with torch.no_grad():
        assert _dice(net(x), y) > 0.9
