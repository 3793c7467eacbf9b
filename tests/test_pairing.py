"""--pairing: the two-view InfoNCE and SoftNN of the reference (rows labelled by image) beside
ours (each view paired with the victim's answer to that view), both against naive loops."""
import math

import pytest
import torch

from loss import SPECS, infonce, softnn

B, D = 3, 4


def _rows():
    gen = torch.Generator().manual_seed(0)
    stolen = torch.randn(2 * B, D, generator=gen, dtype=torch.float64)
    victim = torch.randn(2 * B, D, generator=gen, dtype=torch.float64)
    return stolen, victim


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _naive_infonce(stolen, victim, tau, identity):
    """Mean over anchors of -log(exp(s_at / tau) / sum_{j != a} exp(s_aj / tau)), t = the first
    row j != a with the same identity."""
    x = torch.cat((stolen, victim))
    total = 0.0
    for a in range(len(x)):
        target = next(j for j in range(len(x)) if j != a and identity(j) == identity(a))
        denom = sum(math.exp(_cos(x[a], x[j]) / tau) for j in range(len(x)) if j != a)
        total += -math.log(math.exp(_cos(x[a], x[target]) / tau) / denom)
    return total / len(x)


def _naive_softnn(stolen, victim, temp, identity, eps=1e-9):
    x = torch.cat((stolen, victim))
    total = 0.0
    for i in range(len(x)):
        w = [math.exp(-float(((x[i] - x[j]) ** 2).sum()) / temp) if j != i else 0.0 for j in range(len(x))]
        same = sum(w[j] for j in range(len(x)) if j != i and identity(j) == identity(i))
        total += -math.log(eps + same / sum(w))
    return total / len(x)


def test_reference_infonce_matches_a_naive_loop():
    stolen, victim = _rows()
    # [S0; S1; V0; V1]: row r is image r mod B; a stolen anchor's target is its other stolen view,
    # a victim anchor's target is S0 of its image
    want = _naive_infonce(stolen, victim, 0.5, lambda r: r % B)
    got = infonce(stolen, victim, temperature=0.5, n_views=2, pairing="reference")
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_our_infonce_pairs_each_view_with_its_own_answer():
    stolen, victim = _rows()
    want = _naive_infonce(stolen, victim, 0.5, lambda r: r % (2 * B))
    assert infonce(stolen, victim, temperature=0.5, n_views=2).item() == pytest.approx(want, rel=1e-6)
    # the two pairings differ on two views and agree on one
    assert abs(infonce(stolen, victim, temperature=0.5, n_views=2, pairing="reference").item() - want) > 0.1
    one = infonce(stolen, victim, temperature=0.5, n_views=1, pairing="reference")
    assert one.item() == pytest.approx(infonce(stolen, victim, temperature=0.5).item(), rel=1e-9)


@pytest.mark.parametrize("pairing, period", [("reference", B), ("view", 2 * B)])
def test_softnn_pairings_match_a_naive_loop(pairing, period):
    stolen, victim = _rows()
    want = _naive_softnn(stolen, victim, 2.0, lambda r: r % period)
    got = softnn(stolen, victim, temperature=2.0, n_views=2, pairing=pairing)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_reference_pairing_pushes_second_views_away_from_their_own_answers():
    """The evidence for keeping ours as the default: with a close copy, the reference's target
    for a view-2 stolen row is its own view 1, and its gradient pushes the row away from the
    victim's answer to it; ours pulls it towards that answer."""
    torch.manual_seed(0)
    b, d = 256, 512
    victim = torch.randn(2 * b, d)
    stolen = (victim + 0.1 * torch.randn(2 * b, d)).requires_grad_(True)
    away = {}
    for pairing in ("view", "reference"):
        stolen.grad = None
        infonce(stolen, victim, temperature=0.07, n_views=2, pairing=pairing).backward()
        toward = ((victim[b:] - stolen[b:].detach()) * -stolen.grad[b:]).sum(1)
        away[pairing] = (toward < 0).float().mean().item()
    assert away["reference"] > 0.9 and away["view"] < 0.1, away


def test_the_loss_table_feeds_pairing_and_views():
    for name in ("infonce", "softnn"):
        spec = SPECS[name]
        assert spec.hparams({"temperature": 0.1, "temperaturesn": 5.0,
                             "pairing": "reference"})["pairing"] == "reference"
        assert spec.batch_kwargs(2) == {"n_views": 2}
    with pytest.raises(ValueError, match="pairing"):
        infonce(*_rows(), n_views=2, pairing="image")
