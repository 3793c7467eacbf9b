import json

import pytest
import torch

from attacks.client import QueryClient
from defenses.base import Defense
from models import build_encoder, build_mlp
from service.victim import EncoderBackend, VictimService
from utils import QueryBudgetExceeded


class CountingBackend:
    """Answers with the mean pixel per channel; counts forward calls and images seen."""
    out_dim = 3

    def __init__(self):
        self.calls, self.images = 0, 0

    def answer(self, x):
        self.calls += 1
        self.images += x.shape[0]
        return x.mean(dim=(2, 3))


def Victim(backend, **kwargs):
    return QueryClient(backend, **kwargs)


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_every_image_and_view_is_one_query_and_budget_is_exact():
    v = Victim(CountingBackend(), budget=10)
    x = images(4)
    v.query(x, keys=[(i, 0) for i in range(4)])          # view 0 of 4 images
    v.query(x, keys=[(i, 1) for i in range(4)])          # view 1: 4 more queries
    assert v.queries_used == 8 and v.remaining == 2
    v.query(x[:2], keys=[(4, 0), (5, 0)])                # exactly up to the budget
    assert v.queries_used == 10
    with pytest.raises(QueryBudgetExceeded, match="budget of 10"):
        v.query(x[:1], keys=[(6, 0)])
    assert v.queries_used == 10                          # a refused call answers nothing
    # cached answers still come back free of charge
    assert v.query(x[:2], keys=[(0, 0), (1, 1)]).shape == (2, 3)


def test_refusal_is_all_or_nothing():
    backend = CountingBackend()
    v = Victim(backend, budget=5)
    with pytest.raises(QueryBudgetExceeded):
        v.query(images(6), keys=list(range(6)))
    assert v.queries_used == 0 and backend.images == 0


def test_forward_pass_runs_once_per_query_across_epochs(tmp_path):
    backend = CountingBackend()
    v = Victim(backend, budget=100, log_path=tmp_path / "queries.jsonl")
    x = images(8)
    first = v.query(x, keys=list(range(8)))
    v.end_epoch(1)
    for epoch in range(2, 6):
        again = v.query(x, keys=list(range(8)))
        assert torch.equal(again, first)
        v.end_epoch(epoch)
    assert backend.calls == 1 and backend.images == 8 and v.queries_used == 8
    log = [json.loads(ln) for ln in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [r["new_queries"] for r in log] == [8, 0, 0, 0, 0]
    assert [r["cache_hits"] for r in log] == [0, 8, 8, 8, 8]
    assert log[0]["new_keys"] == list(range(8))


def test_mixed_cached_and_new_keys_and_duplicates():
    backend = CountingBackend()
    v = Victim(backend, budget=None)
    x = images(4)
    v.query(x[:2], keys=["a", "b"])
    out = v.query(x, keys=["a", "b", "c", "c"])
    assert v.queries_used == 3 and backend.images == 3
    assert torch.equal(out[2], out[3])
    # answers follow the keys, not the order in which they were first asked
    assert torch.allclose(out[:2], backend.answer(x[:2].float() / 255))


def test_the_answer_store_grows_past_its_first_block_and_keeps_every_answer_exact():
    """600 keys asked in uneven batches (the store starts at 256 rows and doubles twice), then
    all of them again in a shuffled order: each answer comes back bit for bit, nothing is asked twice."""
    backend = CountingBackend()
    v = Victim(backend)
    x = images(600, seed=3)
    alone = backend.answer(x.float() / 255)
    start = 0
    for size in (1, 255, 7, 300, 37):
        out = v.query(x[start:start + size], keys=list(range(start, start + size)))
        assert torch.equal(out, alone[start:start + size])
        start += size
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    again = v.query(x[order], keys=order.tolist())
    assert torch.equal(again, alone[order]) and backend.images == 600 + 600 and v.queries_used == 600


class MeanBackend:
    """A service backend: the mean pixel per channel as the 'representation'."""
    out_dims = {"representation": 3}

    def __init__(self):
        self.images = 0

    def outputs(self, x):
        self.images += x.shape[0]
        return {"representation": x.mean(dim=(2, 3))}


class Shift(Defense):
    name = "shift"

    def __init__(self):
        self.seen = []

    def apply(self, account, images, answers, state, *, outputs):
        self.seen.append((account, images.shape[0]))
        state["n"] = state.get("n", 0) + answers.shape[0]
        return answers + 1.0


def test_defense_chain_sees_account_and_images_and_cached_answers_skip_it():
    x = images(3)
    plain = QueryClient(VictimService(MeanBackend()).connect("a"))
    assert torch.allclose(plain.query(x), x.float().div(255).mean(dim=(2, 3)))
    shift = Shift()
    service = VictimService(MeanBackend(), defenses=[shift])
    client = QueryClient(service.connect("alice"))
    out = client.query(x, keys=[0, 1, 2])
    client.query(x, keys=[0, 1, 2])  # cached: the service is not asked again
    assert torch.allclose(out, x.float().div(255).mean(dim=(2, 3)) + 1.0)
    assert shift.seen == [("alice", 3)] and service.accounts["alice"].state["shift"] == {"n": 3}
    assert service.usage("alice") == {"account": "alice", "used": 3, "requests": 1, "budget": None,
                                      "remaining": None}


def test_service_budget_is_per_account_and_refuses_whole_batches():
    backend = MeanBackend()
    service = VictimService(backend)
    service.account("bob", budget=4)
    service.answer("bob", images(3))
    with pytest.raises(QueryBudgetExceeded, match="account 'bob'"):
        service.answer("bob", images(2))
    assert service.usage("bob")["used"] == 3 and backend.images == 3
    service.answer("carol", images(5))  # another account, no budget
    assert service.usage("carol")["used"] == 5


def test_encoder_backend_answers_without_gradient_and_with_head():
    enc = build_encoder("resnet18", width=4)
    head = build_mlp([enc.out_dim, enc.out_dim, 8])
    rep = QueryClient(VictimService(EncoderBackend(enc, head)).connect())
    proj = QueryClient(VictimService(EncoderBackend(enc, head), answers="head").connect())
    x = images(5)
    h, z = rep.query(x), proj.query(x)
    assert h.shape == (5, 32) and z.shape == (5, 8) and rep.out_dim == 32 and proj.out_dim == 8
    assert not h.requires_grad and not any(p.requires_grad for p in enc.parameters())
    assert not enc.training
    # a stolen model trained on the answers gets gradients; the victim's weights none
    stolen = torch.nn.Linear(48, 32)
    loss = (stolen(x.float().flatten(1)) - h).pow(2).mean()
    loss.backward()
    assert stolen.weight.grad is not None
    assert all(p.grad is None for p in enc.parameters())
    from utils import UserError

    with pytest.raises(UserError, match="cannot answer 'head'"):
        VictimService(EncoderBackend(enc), answers="head")
