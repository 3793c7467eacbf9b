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


# =======================================================================================
# The other losses: naive float64 loop references, hand-computed values, gradients,
# optimisation, errors.
# =======================================================================================

from loss import (  # noqa: E402
    HPARAMS,
    LOSS_NAMES,
    NEEDS,
    barlow,
    bce,
    mse,
    softce,
    softnn,
    supcon,
    symmetrized,
    wasserstein,
)

# tiny example used by the hand-computed tests
S3 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
V3 = [[1.0, 0.0], [0.0, 2.0], [2.0, 0.0]]


def _rand(rows, dim, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    v = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    if positive:
        s, v = s.abs(), v.abs()
    return s, v


def _rows(t):
    return [[float(a) for a in row] for row in t]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _unit(a):
    n = math.sqrt(_dot(a, a))
    return [x / n for x in a]


# ---------------------------------------------------------------- naive references

def naive_mse(s, v):
    s, v = _rows(s), _rows(v)
    total = sum((a - b) ** 2 for rs, rv in zip(s, v) for a, b in zip(rs, rv))
    return total / (len(s) * len(s[0]))


def naive_softnn(s, v, temperature, eps=1e-9):
    x = _rows(s) + _rows(v)
    n = len(s)
    loss = 0.0
    for i in range(2 * n):
        same = all_ = 0.0
        for j in range(2 * n):
            if j == i:
                continue
            w = math.exp(-sum((a - b) ** 2 for a, b in zip(x[i], x[j])) / temperature)
            all_ += w
            if j % n == i % n:
                same += w
        loss -= math.log(eps + same / all_)
    return loss / (2 * n)


def lse_softnn(s, v, temperature, eps=1e-9):
    """Float64 log-space reference (max-shifted sums), finite for any distances."""
    x = _rows(s) + _rows(v)
    n = len(s)

    def lse(vals):
        m = max(vals)
        return m + math.log(sum(math.exp(a - m) for a in vals))

    loss = 0.0
    for i in range(2 * n):
        logits = {j: -sum((a - b) ** 2 for a, b in zip(x[i], x[j])) / temperature for j in range(2 * n) if j != i}
        r = lse([v for j, v in logits.items() if j % n == i % n]) - lse(list(logits.values()))
        # log(eps + e^r) = max(a, b) + log1p(e^{-|a - b|}) with a = log eps, b = r
        a, b = math.log(eps), r
        loss -= max(a, b) + math.log1p(math.exp(-abs(a - b)))
    return loss / (2 * n)


def naive_wasserstein(s, v):
    out = 0.0
    for rs, rv in zip(_rows(s), _rows(v)):
        ts, tv = sum(rs) + 1e-14, sum(rv) + 1e-14
        cs = cv = 0.0
        for a, b in zip(rs, rv):
            cs += a / ts
            cv += b / tv
            out += abs(cs - cv)
    return out / len(s)


def naive_supcon(s, v, labels, n_views, temperature, base_temperature=0.07):
    batch = len(s) // n_views
    x = [_unit(r) for r in _rows(s)] + [_unit(r) for r in _rows(v)]
    y = [int(labels[r % batch]) for r in range(len(x))]
    per_anchor = []
    for a in range(len(x)):
        others = [b for b in range(len(x)) if b != a]
        denom = sum(math.exp(_dot(x[a], x[b]) / temperature) for b in others)
        pos = [b for b in others if y[b] == y[a]]
        if not pos:
            continue
        mean_lp = sum(_dot(x[a], x[b]) / temperature - math.log(denom) for b in pos) / len(pos)
        per_anchor.append(-(temperature / base_temperature) * mean_lp)
    return sum(per_anchor) / len(per_anchor)


def naive_barlow(s, v, lambd=0.0051, eps=1e-5):
    s, v = _rows(s), _rows(v)
    b = len(s) // 2
    z1, z2 = s[:b] + v[:b], s[b:] + v[b:]
    rows, dim = len(z1), len(z1[0])

    def standardise(z):
        out = [[0.0] * dim for _ in range(rows)]
        for d in range(dim):
            col = [z[r][d] for r in range(rows)]
            mean = sum(col) / rows
            var = sum((c - mean) ** 2 for c in col) / rows
            for r in range(rows):
                out[r][d] = (col[r] - mean) / math.sqrt(var + eps)
        return out

    z1, z2 = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(dim):
        for j in range(dim):
            c = sum(z1[r][i] * z2[r][j] for r in range(rows)) / rows
            loss += (c - 1.0) ** 2 if i == j else lambd * c * c
    return loss


def naive_symmetrized(p1, p2, z1, z2):
    def cos(a, b):
        return _dot(a, b) / max(math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b)), 1e-8)

    p1, p2, z1, z2 = map(_rows, (p1, p2, z1, z2))
    c12 = sum(cos(a, b) for a, b in zip(p1, z2)) / len(p1)
    c21 = sum(cos(a, b) for a, b in zip(p2, z1)) / len(p2)
    return -0.5 * (c12 + c21)


def naive_softce(s, v, temperature):
    out = 0.0
    for rs, rv in zip(_rows(s), _rows(v)):
        zt = sum(math.exp(b / temperature) for b in rv)
        zs = sum(math.exp(a) for a in rs)
        for a, b in zip(rs, rv):
            out -= (math.exp(b / temperature) / zt) * (a - math.log(zs))
    return out / len(s)


def naive_bce(s, v):
    total, count = 0.0, 0
    for rs, rv in zip(_rows(s), _rows(v)):
        for x, q in zip(rs, rv):
            t = 1.0 if q > 0 else 0.0
            total += math.log(1.0 + math.exp(x)) - t * x
            count += 1
    return total / count


# ---------------------------------------------------------------- (1) vs naive loops

@pytest.mark.parametrize("rows", [1, 5])
def test_mse_matches_naive(rows):
    s, v = _rand(rows, 4, rows)
    assert mse(s, v).item() == pytest.approx(naive_mse(s, v), rel=1e-10)


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("temperature", [1.0, 10.0, 100.0])
def test_softnn_matches_naive(rows, temperature):
    s, v = _rand(rows, 4, 100 + rows)
    assert softnn(s, v, temperature=temperature).item() == pytest.approx(
        naive_softnn(s, v, temperature), rel=1e-8, abs=1e-12)
    # float32 inputs agree with the float64 loop too
    got32 = softnn(s.float(), v.float(), temperature=temperature)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(naive_softnn(s, v, temperature), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("rows", [1, 5])
def test_wasserstein_matches_naive(rows):
    s, v = _rand(rows, 6, 200 + rows, positive=True)
    assert wasserstein(s, v).item() == pytest.approx(naive_wasserstein(s, v), rel=1e-10)


@pytest.mark.parametrize("n_views,batch", [(2, 1), (2, 4), (3, 3)])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_matches_naive(n_views, batch, temperature):
    s, v = _rand(n_views * batch, 5, 300 + batch)
    labels = torch.randint(0, 3, (batch,), generator=torch.Generator().manual_seed(batch))
    got = supcon(s, v, labels=labels, n_views=n_views, temperature=temperature).item()
    assert got == pytest.approx(naive_supcon(s, v, labels.tolist(), n_views, temperature), rel=1e-8)
    # labels given per row (already repeated over views) give the same value
    per_row = supcon(s, v, labels=labels.repeat(n_views), n_views=n_views, temperature=temperature).item()
    assert per_row == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_matches_naive(batch, lambd):
    s, v = _rand(2 * batch, 3, 400 + batch)
    assert barlow(s, v, lambd=lambd).item() == pytest.approx(naive_barlow(s, v, lambd), rel=1e-8)


@pytest.mark.parametrize("batch", [1, 4])
def test_symmetrized_matches_naive(batch):
    s, v = _rand(2 * batch, 5, 500 + batch)
    expected = naive_symmetrized(s[:batch], s[batch:], v[:batch], v[batch:])
    assert symmetrized(s, v).item() == pytest.approx(expected, rel=1e-10)
    explicit = symmetrized(s[:batch], s[batch:], z1=v[:batch], z2=v[batch:])
    assert explicit.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("temperature", [1.0, 3.0, 0.5])
def test_softce_matches_naive(rows, temperature):
    s, v = _rand(rows, 4, 600 + rows)
    assert softce(s, v, temperature=temperature).item() == pytest.approx(
        naive_softce(s, v, temperature), rel=1e-10)


@pytest.mark.parametrize("rows", [1, 5])
def test_bce_matches_naive(rows):
    s, v = _rand(rows, 4, 700 + rows)
    assert bce(s, v).item() == pytest.approx(naive_bce(s, v), rel=1e-10)


# ---------------------------------------------------------------- (2) hand-computed values

def test_mse_hand():
    # differences: [0,0], [0,-1], [-1,1] -> squares 0,0,0,1,1,1 -> 3 / 6 elements
    assert mse(torch.tensor(S3), torch.tensor(V3)).item() == pytest.approx(0.5)


def test_wasserstein_hand():
    # rows / row sums: s = [1,0],[0,1],[.5,.5]; v = [1,0],[0,1],[1,0]
    # CDFs: s = [1,1],[0,1],[.5,1]; v = [1,1],[0,1],[1,1] -> per row 0, 0, 0.5 -> mean 1/6
    assert wasserstein(torch.tensor(S3), torch.tensor(V3)).item() == pytest.approx(1 / 6, rel=1e-6)


def test_bce_hand():
    # targets (v > 0) = [1,0],[0,1],[1,0]; BCE(x, t) = log(1 + e^x) - t*x
    # (1,t=1): log(1+e^-1)   (0,t=0): log 2   (0,t=0): log 2   (1,t=1): log(1+e^-1)
    # (1,t=1): log(1+e^-1)   (1,t=0): log(1+e)
    e = math.e
    expected = (3 * math.log(1 + 1 / e) + 2 * math.log(2) + math.log(1 + e)) / 6
    assert bce(torch.tensor(S3), torch.tensor(V3)).item() == pytest.approx(expected, rel=1e-6)


def test_softce_hand_uses_the_victim():
    # L = log(1+e). targets softmax(v): [e, 1]/(1+e), [1, e^2]/(1+e^2), [e^2, 1]/(1+e^2)
    # log_softmax(s): [1-L, -L], [-L, 1-L], [-log2, -log2]
    # row 1: L - e/(1+e); row 2: L - e^2/(1+e^2); row 3: log 2; mean of the three
    e, L = math.e, math.log(1 + math.e)
    expected = ((L - e / (1 + e)) + (L - e ** 2 / (1 + e ** 2)) + math.log(2)) / 3
    s, v = torch.tensor(S3), torch.tensor(V3)
    assert softce(s, v).item() == pytest.approx(expected, rel=1e-6)
    # the reference's bug (target = softmax(stolen)) would give the entropy of softmax(s) instead
    buggy = -(torch.softmax(s, 1) * torch.log_softmax(s, 1)).sum(1).mean().item()
    assert abs(buggy - expected) > 1e-2


def test_softnn_hand():
    # X = s1 (1,0), s2 (0,1), s3 (1,1), v1 (1,0), v2 (0,2), v3 (2,0); ids 0,1,2,0,1,2; T = 1
    # squared distances: s1: s2 2, s3 1, v1 0, v2 5, v3 1;   s2: s1 2, s3 1, v1 2, v2 1, v3 5
    # s3: s1 1, s2 1, v1 1, v2 2, v3 2;   v1: s1 0, s2 2, s3 1, v2 5, v3 1
    # v2: s1 5, s2 1, s3 2, v1 5, v3 8;   v3: s1 1, s2 5, s3 2, v1 1, v2 8
    E = lambda k: math.exp(-k)  # noqa: E731
    same_all = [
        (E(0), E(2) + E(1) + E(0) + E(5) + E(1)),  # s1
        (E(1), E(2) + E(1) + E(2) + E(1) + E(5)),  # s2
        (E(2), E(1) + E(1) + E(1) + E(2) + E(2)),  # s3
        (E(0), E(0) + E(2) + E(1) + E(5) + E(1)),  # v1
        (E(1), E(5) + E(1) + E(2) + E(5) + E(8)),  # v2
        (E(2), E(1) + E(5) + E(2) + E(1) + E(8)),  # v3
    ]
    expected = -sum(math.log(1e-9 + a / b) for a, b in same_all) / 6
    assert softnn(torch.tensor(S3), torch.tensor(V3), temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_hand():
    # B = 2 images, 2 views, labels [0, 1]. stolen rows (view-major) = e1, e2, e1, e2;
    # victim rows (normalised) = e2, e1, e2, e1. Feature rows 0..7 with labels 0,1,0,1,0,1,0,1.
    # Every anchor sees 3 other rows equal to itself (cos 1) and 4 orthogonal rows (cos 0):
    # denominator 3e + 4 (tau = 1). Its 3 positives: one equal (logit 1), two orthogonal (logit 0)
    # -> mean log-prob = 1/3 - log(3e + 4); loss = (tau / base_tau) * (log(3e + 4) - 1/3).
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.0, 3.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1])
    core = math.log(3 * math.e + 4) - 1 / 3
    got = supcon(s, v, labels=labels, n_views=2, temperature=1.0, base_temperature=1.0)
    assert got.item() == pytest.approx(core, rel=1e-6)
    got = supcon(s, v, labels=labels, n_views=2, temperature=1.0)  # base tau 0.07
    assert got.item() == pytest.approx(core / 0.07, rel=1e-6)


def test_barlow_hand():
    # B = 1: Z1 = [s0; v0] = [[1,0],[0,1]], Z2 = [s1; v1] = [[0,1],[1,0]].
    # Each 2-row column (a, b) standardises to +-k with k = 0.5 / sqrt(0.25 + 1e-5):
    # Z1 -> [[k,-k],[-k,k]], Z2 -> [[-k,k],[k,-k]] -> C = Z1^T Z2 / 2 = [[-k^2, k^2], [k^2, -k^2]]
    # loss = 2 (-k^2 - 1)^2 + lambd * 2 k^4
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    k2 = 0.25 / (0.25 + 1e-5)
    for lambd in (0.0051, 1.0):
        expected = 2 * (k2 + 1) ** 2 + lambd * 2 * k2 ** 2
        assert barlow(s, v, lambd=lambd).item() == pytest.approx(expected, rel=1e-12)


def test_symmetrized_hand():
    # p1 = (1,0), p2 = (0,1); z1 = (1,1), z2 = (0,2)
    # cos(p1, z2) = 0, cos(p2, z1) = 1/sqrt(2) -> loss = -0.5 * (0 + 1/sqrt 2)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    expected = -0.5 / math.sqrt(2)
    assert symmetrized(s, v).item() == pytest.approx(expected, rel=1e-6)
    assert symmetrized(s[:1], s[1:], z1=v[:1], z2=v[1:]).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_hand_3x2():
    # rows normalised: s = e1, e2, (1,1)/r2; v = e1, e2, e1 (r2 = sqrt 2); tau = 1
    # infonce with 3 rows is NT-Xent over 6 rows; anchor s1 = e1: positive v1 (cos 1);
    # others: s2 0, s3 1/r2, v2 0, v3 1 -> term -log(e / (e + 1 + e^(1/r2) + 1 + e))
    r = 1 / math.sqrt(2)
    e = math.e
    x = [(1, 0), (0, 1), (r, r), (1, 0), (0, 1), (1, 0)]
    terms = []
    for a in range(6):
        denom = sum(math.exp(x[a][0] * x[j][0] + x[a][1] * x[j][1]) for j in range(6) if j != a)
        p = (a + 3) % 6
        terms.append(-math.log(math.exp(x[a][0] * x[p][0] + x[a][1] * x[p][1]) / denom))
    assert terms[0] == pytest.approx(-math.log(e / (e + 1 + math.exp(r) + 1 + e)))
    got = infonce(torch.tensor(S3), torch.tensor(V3), temperature=1.0).item()
    assert got == pytest.approx(sum(terms) / 6, rel=1e-6)


# ---------------------------------------------------------------- (3) gradients, (4) optimisation

def _kwargs(name, rows):
    if name == "supcon":
        return {"labels": torch.arange(rows // 2) % 2, "n_views": 2}
    if name == "barlow":
        return {"n_views": 2}
    return {}


def _inputs(name, rows=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, v = torch.randn(rows, dim, generator=g), torch.randn(rows, dim, generator=g)
    if name == "wasserstein":
        s, v = s.abs(), v.abs()
    return s, v


def test_table_names_and_metadata():
    assert set(LOSS_NAMES) == {"infonce", "mse", "softnn", "wasserstein", "supcon", "barlow",
                               "symmetrized", "softce", "bce"}
    assert LOSS_NAMES == tuple(LOSSES)
    assert NEEDS["supcon"] == {"labels", "n_views"} and NEEDS["barlow"] == {"n_views"}
    assert set(NEEDS) <= set(LOSSES) and set(HPARAMS) <= set(LOSSES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_stolen_and_stop_grad_only_in_symmetrized(name):
    s, v = _inputs(name)
    s.requires_grad_(True)
    v.requires_grad_(True)
    loss = LOSSES[name](s, v, **_kwargs(name, 6))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    if name == "symmetrized":
        assert v.grad is None  # stop-gradient is part of SimSiam
    elif name == "bce":
        assert v.grad is None  # the target (v > 0) is a step function: no gradient path at all
    else:
        assert v.grad is not None and v.grad.abs().sum() > 0  # the loss itself never detaches


def test_symmetrized_explicit_form_stops_gradient_to_targets():
    p1, p2, z1, z2 = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    symmetrized(p1, p2, z1=z1, z2=z2).backward()
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    assert z1.grad is None and z2.grad is None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_decreases_under_adam(name):
    s0, victim = _inputs(name, seed=1)
    stolen = torch.nn.Parameter(s0.clone())
    opt = torch.optim.Adam([stolen], lr=0.05)
    kwargs = _kwargs(name, 6)
    first = None
    for _ in range(25):
        opt.zero_grad()
        loss = LOSSES[name](stolen, victim, **kwargs)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = LOSSES[name](stolen, victim, **kwargs).item()
    assert last < first


# ---------------------------------------------------------------- softnn stability

def test_softnn_float32_large_distances_is_finite_and_exact():
    g = torch.Generator().manual_seed(7)
    s64 = torch.randn(5, 8, generator=g, dtype=torch.float64) * 100
    v64 = s64 + torch.randn(5, 8, generator=g, dtype=torch.float64) * 100
    s, v = s64.float(), v64.float()
    # the naive formula underflows: every off-diagonal weight exp(-d) is exactly 0
    d = torch.cdist(torch.cat((s, v)), torch.cat((s, v))) ** 2
    assert torch.exp(-d - torch.eye(10) * 1e9).max() == 0
    got = softnn(s, v, temperature=1.0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(lse_softnn(s.double(), v.double(), 1.0), rel=1e-5)
    s.requires_grad_(True)
    softnn(s, v, temperature=1.0).backward()
    assert torch.isfinite(s.grad).all()


def test_half_precision_inputs_compute_in_float32():
    for name in LOSSES:
        a, b = _inputs(name)
        out = LOSSES[name](a.half(), b.half(), **_kwargs(name, 6))
        assert out.dtype == torch.float32 and torch.isfinite(out), name


# ---------------------------------------------------------------- (5) errors

def test_supcon_errors():
    s, v = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="supcon needs class labels"):
        supcon(s, v, n_views=2)
    with pytest.raises(ValueError, match="--n-views 2"):
        supcon(s, v, labels=torch.tensor([0, 1, 0, 1]), n_views=1)
    with pytest.raises(ValueError, match="--n-views 2"):
        supcon(torch.randn(3, 3), torch.randn(3, 3), labels=torch.tensor([0]), n_views=2)
    with pytest.raises(ValueError, match="unlabeled"):
        supcon(s, v, labels=torch.tensor([0, -1]), n_views=2)
    with pytest.raises(ValueError, match="labels"):
        supcon(s, v, labels=torch.tensor([0, 1, 2]), n_views=2)


def test_barlow_errors():
    with pytest.raises(ValueError, match="two views"):
        barlow(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="two views"):
        barlow(torch.randn(4, 4), torch.randn(4, 4), n_views=1)


def test_symmetrized_errors():
    with pytest.raises(ValueError):
        symmetrized(torch.randn(3, 4), torch.randn(3, 4))  # odd rows in the uniform form
    with pytest.raises(ValueError):
        symmetrized(torch.randn(2, 4), torch.randn(2, 4), z1=torch.randn(2, 4))
    with pytest.raises(ValueError):
        symmetrized(torch.randn(2, 4), torch.randn(2, 4), z1=torch.randn(2, 4), z2=torch.randn(3, 4))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shape_mismatch_raises(name):
    with pytest.raises(ValueError, match="shape"):
        LOSSES[name](torch.randn(4, 3), torch.randn(4, 5), **_kwargs(name, 4))
    with pytest.raises(ValueError):
        LOSSES[name](torch.randn(4), torch.randn(4), **_kwargs(name, 4))
