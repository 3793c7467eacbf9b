"""defenses.similarity: exact nearest-earlier search and the per-account answer history."""
import math

import pytest
import torch

from defenses.similarity import AnswerHistory, check_batch_against, nearest_earlier


def brute_force(batch, history, metric):
    """Double loop in float64: best earlier candidate per row, earliest index on ties."""
    batch = batch.double()
    hist = history.double() if history is not None else batch[:0]
    cands = torch.cat([hist, batch])
    n = hist.shape[0]
    scores, idx = [], []
    for i in range(batch.shape[0]):
        best, arg = (-2.0 if metric == "cosine" else math.inf), -1
        for j in range(n + i):
            a, c = batch[i], cands[j]
            if metric == "cosine":
                s = float(a @ c / (a.norm().clamp_min(1e-12) * c.norm().clamp_min(1e-12)))
                if s > best:
                    best, arg = s, j
            else:
                s = float((a - c).norm())
                if s < best:
                    best, arg = s, j
        scores.append(best)
        idx.append(arg)
    return torch.tensor(scores, dtype=torch.float64), torch.tensor(idx)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("n_hist,chunk", [(0, 8192), (37, 8192), (37, 5), (37, 37), (40, 8), (37, 1)])
def test_matches_brute_force(metric, n_hist, chunk):
    g = torch.Generator().manual_seed(n_hist * 31 + chunk)
    hist = torch.randn(n_hist, 16, generator=g) if n_hist else None
    batch = torch.randn(12, 16, generator=g)
    scores, idx = nearest_earlier(batch, hist, metric, chunk=chunk)
    ref_s, ref_i = brute_force(batch, hist, metric)
    assert scores.dtype == torch.float32 and idx.dtype == torch.long
    assert torch.equal(idx, ref_i)
    finite = torch.isfinite(ref_s)
    assert torch.allclose(scores[finite].double(), ref_s[finite], atol=1e-5)
    assert torch.equal(torch.isfinite(scores), finite)


@pytest.mark.parametrize("metric,sentinel", [("cosine", -2.0), ("l2", math.inf)])
def test_first_row_without_history_gets_sentinel(metric, sentinel):
    batch = torch.randn(3, 8)
    for hist in (None, torch.empty(0, 8)):
        scores, idx = nearest_earlier(batch, hist, metric)
        assert scores[0].item() == sentinel and idx[0].item() == -1
        assert idx[1].item() == 0 and idx[2].item() in (0, 1)
    scores, idx = nearest_earlier(torch.empty(0, 8), None, metric)
    assert scores.shape == (0,) and idx.shape == (0,)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_duplicate_of_history_row(metric):
    hist = torch.randn(50, 32)
    batch = torch.randn(4, 32)
    batch[2] = hist[17]
    scores, idx = nearest_earlier(batch, hist, metric, chunk=16)
    assert idx[2].item() == 17
    expected = 1.0 if metric == "cosine" else 0.0
    assert abs(scores[2].item() - expected) < 1e-5
    if metric == "l2":
        assert scores[2].item() == 0.0  # recomputed directly, so exactly zero


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_duplicate_within_batch_points_past_history(metric):
    hist = torch.randn(20, 32)
    batch = torch.randn(6, 32)
    batch[4] = batch[1]
    scores, idx = nearest_earlier(batch, hist, metric)
    assert idx[4].item() == 20 + 1
    assert abs(scores[4].item() - (1.0 if metric == "cosine" else 0.0)) < 1e-5


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("chunk", [1, 3, 8192])
def test_earliest_index_wins_ties(metric, chunk):
    # entries whose products and norms are exact in float32, so the ties are exact
    v = torch.tensor([0.5, 0.5, 0.5, 0.5])
    other = torch.tensor([1.0, 0.0, 0.0, 0.0])
    hist = torch.stack([other, v, other, v, v])
    batch = torch.stack([v, v])
    scores, idx = nearest_earlier(batch, hist, metric, chunk=chunk)
    assert idx.tolist() == [1, 1]  # history row 1, never a later copy nor batch row 0
    # the same inside the batch only
    scores, idx = nearest_earlier(torch.stack([other, v, v, v]), None, metric)
    assert idx.tolist() == [-1, 0, 1, 1]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(metric, dtype):
    g = torch.Generator().manual_seed(3)
    hist = torch.randn(30, 16, generator=g).to(dtype)
    batch = torch.randn(5, 16, generator=g).to(dtype)
    batch[3] = hist[8]
    scores, idx = nearest_earlier(batch, hist, metric, chunk=7)
    ref_s, ref_i = brute_force(batch.float(), hist.float(), metric)
    assert scores.dtype == torch.float32
    assert torch.equal(idx, ref_i)
    assert torch.allclose(scores.double(), ref_s, atol=1e-4)


def test_zero_vectors_have_cosine_zero():
    hist = torch.zeros(3, 8)
    batch = torch.randn(2, 8)
    scores, idx = nearest_earlier(batch, hist, "cosine")
    assert scores[0].item() == 0.0 and idx[0].item() == 0
    assert not torch.isnan(scores).any()


def test_bad_inputs():
    with pytest.raises(ValueError, match="allowed metrics are 'cosine', 'l2'"):
        nearest_earlier(torch.randn(2, 4), None, "dot")
    with pytest.raises(ValueError, match="history must be"):
        nearest_earlier(torch.randn(2, 4), torch.randn(3, 5), "l2")
    with pytest.raises(ValueError, match="chunk"):
        nearest_earlier(torch.randn(2, 4), None, "l2", chunk=0)


def test_history_grows_past_capacity_in_order():
    h = AnswerHistory(4, capacity=2)
    data = torch.arange(4 * 23, dtype=torch.float32).reshape(23, 4)
    for start in (0, 1, 4, 5, 12):
        end = {0: 1, 1: 4, 4: 5, 5: 12, 12: 23}[start]
        h.append(data[start:end])
    assert len(h) == 23 and h.capacity >= 23
    assert torch.equal(h.view(), data)
    assert h.view().data_ptr() == h._buf.data_ptr()  # a view, not a copy
    assert h.bytes_per_query == 16 and h.nbytes == 23 * 16


def test_history_dtype_and_lazy_dim():
    h = AnswerHistory(dtype=torch.float16)
    assert len(h) == 0 and h.bytes_per_query == 0 and h.view().shape == (0, 0)
    h.append(torch.randn(3, 10))
    assert h.view().dtype == torch.float16 and h.bytes_per_query == 20 and h.nbytes == 60
    with pytest.raises(ValueError, match="dimension"):
        h.append(torch.randn(1, 11))


def test_history_state_dict_round_trip(tmp_path):
    h = AnswerHistory(6, capacity=1, max_size=9)
    data = torch.randn(14, 6)
    h.append(data[:5])
    h.append(data[5:])
    torch.save(h.state_dict(), tmp_path / "h.pt")
    state = torch.load(tmp_path / "h.pt", weights_only=True)
    h2 = AnswerHistory()
    h2.load_state_dict(state)
    assert h2.dim == 6 and h2.max_size == 9 and len(h2) == 9
    assert torch.equal(h2.view(), data[-9:])
    empty = AnswerHistory()
    empty.load_state_dict(AnswerHistory().state_dict())
    assert len(empty) == 0 and empty.dim is None


def test_history_max_size_keeps_most_recent():
    h = AnswerHistory(2, capacity=1, max_size=5)
    data = torch.arange(2 * 40, dtype=torch.float32).reshape(40, 2)
    seen = 0
    for b in (1, 3, 2, 4, 1, 1, 6, 2, 3, 5, 4, 8):
        h.append(data[seen:seen + b])
        seen += b
        assert torch.equal(h.view(), data[max(0, seen - 5):seen])
        assert h.capacity <= 10
    assert seen == 40


def test_check_batch_against_appends():
    h = AnswerHistory(8)
    b1 = torch.randn(4, 8)
    scores, idx = check_batch_against(h, b1, "l2")
    assert idx[0].item() == -1 and len(h) == 4
    b2 = torch.randn(3, 8)
    b2[1] = b1[2]
    scores, idx = check_batch_against(h, b2, "cosine", chunk=3)
    assert idx[1].item() == 2 and abs(scores[1].item() - 1.0) < 1e-5
    assert len(h) == 7 and torch.equal(h.view()[4:], b2)
