"""KAConvTranspose2d / 3d: the closed form equals the literal per-voxel KA layer (float64), shapes and errors."""
from __future__ import annotations

import pytest
import torch

from nnunet_allukan.layers import KAConvTranspose2d, KAConvTranspose3d

CASES = [
    (KAConvTranspose2d, (5, 6), (2, 2)),
    (KAConvTranspose2d, (3, 4), (2, 1)),  # anisotropic, as nnU-Net plans for thick slices
    (KAConvTranspose3d, (3, 4, 2), (2, 2, 2)),
    (KAConvTranspose3d, (2, 3, 3), (1, 2, 2)),
]


@pytest.mark.parametrize("layer_class,spatial,kernel", CASES)
@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_equals_reference_forward_and_every_gradient(layer_class, spatial, kernel, grad_free, bias):
    torch.manual_seed(0)
    fast = layer_class(3, 4, kernel, kernel, bias=bias, grad_free=grad_free).double()
    reference = layer_class(3, 4, kernel, kernel, bias=bias, grad_free=grad_free, implementation="reference").double()
    with torch.no_grad():
        if bias:
            fast.bias.normal_()
        fast.v.normal_()
    reference.load_state_dict(fast.state_dict())
    x = (1.5 * torch.randn(2, 3, *spatial, dtype=torch.float64)).requires_grad_()  # beyond the grid range too
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = fast(x), reference(x_ref)
    assert y.shape == (2, 4, *(s * k for s, k in zip(spatial, kernel)))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    (y_ref * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (name, p), p_ref in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("layer_class,spatial,kernel", [CASES[1], CASES[3]], ids=["2d", "3d"])
@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("basis", ["rbf", "chebyshev", "relu"])
def test_every_basis_family_fast_equals_reference(layer_class, spatial, kernel, grad_free, basis):
    torch.manual_seed(0)
    fast = layer_class(3, 4, kernel, kernel, bias=True, grad_free=grad_free, basis=basis).double()
    reference = layer_class(3, 4, kernel, kernel, bias=True, grad_free=grad_free, basis=basis,
                            implementation="reference").double()
    with torch.no_grad():
        fast.v.normal_()
    reference.load_state_dict(fast.state_dict())
    x = (1.5 * torch.randn(2, 3, *spatial, dtype=torch.float64)).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = fast(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    (y_ref * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (name, p), p_ref in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_grad_free_drops_only_the_spline_input_gradient():
    torch.manual_seed(1)
    free = KAConvTranspose2d(2, 3, 2, grad_free=True).double()
    full = KAConvTranspose2d(2, 3, 2, grad_free=False).double()
    full.load_state_dict(free.state_dict())
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    grads = []
    for layer in (free, full):
        xi = x.clone().requires_grad_()
        layer(xi).sum().backward()
        grads.append((xi.grad, layer.v.grad.clone(), layer.u.grad.clone()))
    torch.testing.assert_close(grads[0][1], grads[1][1])  # v and u gradients are exact in both modes
    torch.testing.assert_close(grads[0][2], grads[1][2])
    assert not torch.allclose(grads[0][0], grads[1][0])  # x loses the B'-path term


def test_matches_conv_transpose_shape_and_parameter_count():
    layer = KAConvTranspose3d(32, 16, (1, 2, 2), (1, 2, 2), bias=True)
    plain = torch.nn.ConvTranspose3d(32, 16, (1, 2, 2), (1, 2, 2), bias=True)
    x = torch.randn(1, 32, 3, 5, 6)
    assert layer(x).shape == plain(x).shape == (1, 16, 3, 10, 12)
    assert layer.u.shape == plain.weight.shape
    assert sum(p.numel() for p in layer.parameters()) == plain.weight.numel() + 16 + 16 * 4 * layer.grid.n_bases


@pytest.mark.parametrize("kwargs", [dict(stride=1), dict(padding=1), dict(output_padding=1), dict(groups=2),
                                    dict(dilation=2)])
def test_refuses_what_has_no_closed_form(kwargs):
    with pytest.raises(ValueError, match="stride == kernel_size"):
        KAConvTranspose2d(4, 4, 2, **kwargs)


def test_wrong_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects input \[B, 4"):
        KAConvTranspose2d(4, 2, 2)(torch.randn(1, 3, 4, 4))
