import math

import pytest
import torch
import torch.nn.functional as F

from loss import LOSSES, info_nce_views, infonce


def naive_info_nce(views, temperature):
    """Obviously-correct loop version: mean over (anchor, positive) pairs."""
    v, b, _ = views.shape
    z = [F.normalize(views[i // b, i % b].double(), dim=0) for i in range(v * b)]
    terms = []
    for a in range(v * b):
        denom = sum(math.exp(float(z[a] @ z[j]) / temperature) for j in range(v * b) if j != a)
        for p in range(v * b):
            if p != a and p % b == a % b:
                terms.append(-math.log(math.exp(float(z[a] @ z[p]) / temperature) / denom))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("n_views,batch", [(2, 1), (2, 5), (3, 4), (4, 2)])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_info_nce_matches_naive_loop(n_views, batch, temperature):
    views = torch.randn(n_views, batch, 6, generator=torch.Generator().manual_seed(n_views * 10 + batch))
    got = info_nce_views(views, temperature=temperature).item()
    assert got == pytest.approx(naive_info_nce(views, temperature), rel=1e-4, abs=1e-5)


def test_info_nce_hand_computed():
    # two items, two views, 2-d unit vectors: view1 = [e1, e2], view2 = [e1, e2]
    # anchor e1(view1): positive e1(view2) cos 1; negatives e2, e2 cos 0; tau = 1
    views = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    expected = -math.log(math.e / (math.e + 2.0))
    assert info_nce_views(views, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert infonce(views[0], views[1], temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_scale_invariant_and_gradients_flow():
    views = torch.randn(2, 4, 8, requires_grad=True)
    loss = info_nce_views(views, temperature=0.2)
    loss.backward()
    assert views.grad is not None and views.grad.abs().sum() > 0
    assert info_nce_views(views.detach() * 7.0, temperature=0.2).item() == pytest.approx(loss.item(), rel=1e-5)


def test_info_nce_bad_shapes():
    with pytest.raises(ValueError):
        info_nce_views(torch.randn(1, 4, 3))
    with pytest.raises(ValueError):
        infonce(torch.randn(4, 3), torch.randn(5, 3))
    assert "infonce" in LOSSES
