"""LARS against the formula of docs/reference-behaviour.md section 6.2 (apex LARC, trust 0.001)."""
import math

import pytest
import torch

from engine.lars import LARS


def test_one_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))       # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8])                        # ||g|| = 1
    LARS([w], lr=1.0, momentum=0.0, weight_decay=0.1).step()
    local = 0.001 * 5 / (1 + 0.1 * 5 + 1e-8)                 # 1/300
    expected = torch.tensor([3.0 - (0.6 + 0.3) * local, 4.0 - (0.8 + 0.4) * local])
    assert torch.allclose(w.detach(), expected, atol=1e-7)
    assert math.isclose(w[0].item(), 2.997, abs_tol=1e-6) and math.isclose(w[1].item(), 3.996, abs_tol=1e-6)


def test_momentum_matches_sgd_on_the_scaled_gradient_and_zero_norms_pass_through():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    zero = torch.nn.Parameter(torch.zeros(3))                # ||w|| = 0: gradient unchanged, no decay
    b = torch.nn.Parameter(a.detach().clone())
    opt = LARS([a, zero], lr=0.5, momentum=0.9, weight_decay=1e-2)
    ref = torch.optim.SGD([b], lr=0.5, momentum=0.9)
    for step in range(3):
        g = torch.randn(4, 3)
        gz = torch.randn(3)
        a.grad, zero.grad = g.clone(), gz.clone()
        local = 0.001 * b.detach().norm() / (g.norm() + 1e-2 * b.detach().norm() + 1e-8)
        b.grad = (g + 1e-2 * b.detach()) * local
        opt.step()
        ref.step()
        assert torch.allclose(a.detach(), b.detach(), atol=1e-6), step
        if step == 0:  # a zero tensor takes the plain gradient step (no trust ratio, no decay)
            assert torch.allclose(zero.detach(), -0.5 * gz)


def test_groups_without_lars_are_plain_sgd_with_weight_decay():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.5])
    LARS([{"params": [w], "lars": False}], lr=0.1, momentum=0.0, weight_decay=0.1).step()
    assert torch.allclose(w.detach(), torch.tensor([1.0 - 0.1 * 0.6, -2.0 - 0.1 * 0.3]))


@pytest.mark.parametrize("kwargs", [{"lr": 0}, {"lr": 0.1, "momentum": 1.0}, {"lr": 0.1, "weight_decay": -1}])
def test_bad_hyper_parameters_are_refused(kwargs):
    with pytest.raises(ValueError, match="LARS needs"):
        LARS([torch.nn.Parameter(torch.ones(2))], **kwargs)
