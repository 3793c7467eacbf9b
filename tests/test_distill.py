import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.client import QueryClient
from attacks.distill import (
    DISTILL_KINDS,
    Distiller,
    distill_optimizer,
    distill_step,
    distillation_loss,
    fidelity_and_accuracy,
    query_fraction,
)
from data_aug import get_dataset, to_float
from models import build_encoder
from service.victim import ClassifierBackend, VictimService
from simclr import Precision, fit
from utils import QueryBudgetExceeded, get_logger

pytestmark = pytest.mark.usefixtures("one_thread")

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]]


def naive_soft_ce(logits, targets, temperature):
    """Per row: -sum_c t_c * log softmax(z / T)_c, averaged over rows, with plain math."""
    total = 0.0
    for z, t in zip(logits, targets):
        zs = [v / temperature for v in z]
        log_norm = math.log(sum(math.exp(v) for v in zs))
        mass = sum(t)
        total += -sum((tc / mass) * (zc - log_norm) for tc, zc in zip(t, zs))
    return total / len(logits)


def naive_softmax(row, temperature=1.0):
    e = [math.exp(v / temperature) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_loss_matches_a_naive_loop_for_each_kind(temperature):
    logits = torch.tensor(LOGITS)
    probs = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]
    got = distillation_loss(logits, torch.tensor(probs), "probabilities", temperature).item()
    assert got == pytest.approx(naive_soft_ce(LOGITS, probs, temperature), rel=1e-6)

    victim_logits = [[1.0, -0.5, 0.0], [-2.0, 0.7, 3.0]]
    targets = [naive_softmax(r, temperature) for r in victim_logits]
    got = distillation_loss(logits, torch.tensor(victim_logits), "logits", temperature).item()
    assert got == pytest.approx(naive_soft_ce(LOGITS, targets, temperature), rel=1e-6)

    onehot = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    expected = sum(-math.log(naive_softmax(z)[c]) for z, c in zip(LOGITS, [1, 2])) / 2
    got = distillation_loss(logits, torch.tensor(onehot), "labels", temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(F.cross_entropy(logits, torch.tensor([1, 2])).item(), rel=1e-6)


def test_top5_renormalises_the_kept_mass():
    logits = torch.tensor([[0.5, 1.0, -0.3, 2.0, 0.0, 0.2, -1.0]])
    kept = torch.tensor([[0.0, 0.2, 0.0, 0.4, 0.1, 0.1, 0.0]])  # 0.8 of the mass kept, 3 classes zeroed
    got = distillation_loss(logits, kept, "top5").item()
    assert got == pytest.approx(naive_soft_ce(logits.tolist(), kept.tolist(), 1.0), rel=1e-6)
    assert got == pytest.approx(distillation_loss(logits, kept / 0.8, "probabilities").item(), rel=1e-6)


def test_distillation_loss_is_float32_and_refuses_unknown_kinds():
    logits = torch.tensor(LOGITS, dtype=torch.float16)
    assert distillation_loss(logits, torch.tensor(LOGITS).softmax(1), "probabilities").dtype == torch.float32
    with pytest.raises(ValueError, match="probabilities, top5, logits, labels"):
        distillation_loss(logits, logits, "kl")
    assert set(DISTILL_KINDS) == {"probabilities", "top5", "logits", "labels"}


def test_classifier_backend_probabilities_and_top5():
    torch.manual_seed(0)
    backend = ClassifierBackend(nn.Linear(12, 10), 10)
    assert backend.out_dims == {"logits": 10, "labels": 10, "probabilities": 10, "top5": 10}
    out = backend.outputs(torch.randn(6, 12))
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(6))
    assert torch.allclose(out["probabilities"], out["logits"].softmax(1))
    top5 = out["top5"]
    assert ((top5 > 0).sum(1) == 5).all()
    nonzero = top5 > 0
    assert torch.equal(top5[nonzero], out["probabilities"][nonzero])
    # the kept classes are the 5 most likely ones
    assert torch.equal(nonzero, torch.zeros_like(nonzero).scatter_(1, out["probabilities"].topk(5).indices, True))
    assert torch.equal(out["labels"].argmax(1), out["logits"].argmax(1))
    small = ClassifierBackend(nn.Linear(12, 3), 3).outputs(torch.randn(2, 12))
    assert torch.allclose(small["top5"], small["probabilities"])  # 3 classes: all kept


def test_query_fraction():
    assert query_fraction(3000, 0.01) == 30
    assert query_fraction(3000, 0.1) == 300
    assert query_fraction(3000, 1.0) == 3000
    assert query_fraction(50, 0.001) == 1  # at least one query
    assert query_fraction(10, 0.25) == 3  # 2.5 rounds up to the nearest
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="query fraction"):
            query_fraction(3000, bad)


def _digits(n):
    data = get_dataset("digits", "train")
    return to_float(data.images[:n]), data.labels[:n], data.num_classes


def _fit(model, step, n, batch, optimizer, lr, tmp_path, epochs=1):
    steps = n // batch

    def batches(epoch, generator):
        order = torch.randperm(n, generator=generator)
        for s in range(steps):
            yield order[s * batch:(s + 1) * batch]

    return fit(step=step, batches=batches, steps_per_epoch=steps, modules=[model], optimizer=optimizer,
               epochs=epochs, base_lr=lr, seed=0, precision=Precision(torch.device("cpu")),
               save=lambda state: None, run_dir=tmp_path, logger=get_logger(None), tensorboard=False)


class Oracle:
    """A stand-in client: answers the one-hot true labels of a fixed set, no accounting."""

    def __init__(self, labels, classes):
        self.labels, self.classes = labels, classes

    def query(self, x, keys):
        return F.one_hot(self.labels[torch.tensor(keys)], self.classes).float()


def test_optimizer_groups_give_head_and_encoder_their_own_lr(tmp_path):
    torch.manual_seed(0)
    x, y, classes = _digits(32)
    model = Distiller(build_encoder("resnet18", width=4), classes)
    opt = distill_optimizer(model, lr_head=1e-2, lr_encoder=1e-3)
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, pytest.approx(0.1)]
    step = distill_step(model, Oracle(y, classes), lambda idx: x[idx], "labels")
    result = _fit(model, step, 32, 16, opt, 1e-2, tmp_path)
    head_lr, encoder_lr = opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]
    assert head_lr > 0 and encoder_lr / head_lr == pytest.approx(0.1)
    assert "agreement" in result.history[0] and 0 <= result.history[0]["agreement"] <= 100


def test_zero_encoder_lr_freezes_the_encoder_while_the_head_moves(tmp_path):
    torch.manual_seed(0)
    x, y, classes = _digits(32)
    model = Distiller(build_encoder("resnet18", width=4), classes)
    encoder0, head0 = copy.deepcopy(model.encoder.state_dict()), copy.deepcopy(model.head.state_dict())
    opt = distill_optimizer(model, lr_head=1e-2, lr_encoder=0.0)
    assert len(opt.param_groups) == 1
    step = distill_step(model, Oracle(y, classes), lambda idx: x[idx], "labels")
    _fit(model, step, 32, 16, opt, 1e-2, tmp_path)
    for k, v in model.encoder.state_dict().items():  # weights and batch-norm statistics
        assert torch.equal(v, encoder0[k]), k
    assert not torch.equal(model.head.weight, head0["weight"])


def _classifier_victim(classes):
    torch.manual_seed(1)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, classes))
    return VictimService(ClassifierBackend(clf, classes), answers="probabilities")


def test_distillation_for_three_epochs_costs_one_query_per_image(tmp_path):
    n = 24
    x, y, classes = _digits(n)
    service = _classifier_victim(classes)
    client = QueryClient(service.connect("a"), budget=n)
    torch.manual_seed(0)
    model = Distiller(build_encoder("resnet18", width=4), classes)
    step = distill_step(model, client, lambda idx: x[idx], "probabilities",
                        augment=lambda imgs, g: imgs.flip(3))
    _fit(model, step, n, 8, distill_optimizer(model, lr_head=1e-2, lr_encoder=1e-3), 1e-2, tmp_path, epochs=3)
    assert client.queries_used == n
    assert service.usage("a")["used"] == n

    short = QueryClient(_classifier_victim(classes).connect("b"), budget=n - 1)
    step = distill_step(model, short, lambda idx: x[idx], "probabilities")
    with pytest.raises(QueryBudgetExceeded):
        _fit(model, step, n, 8, distill_optimizer(model, lr_head=1e-2, lr_encoder=1e-3), 1e-2, tmp_path)


def test_fidelity_and_accuracy():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.logits[x.long().flatten()]

    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0],          # label 0: top-1 and top-5 hit; victim agrees
                           [0.0, 1, 2, 3, 4, 5],          # label 0: last class, both miss; victim agrees
                           [5.0, 0.1, 0.2, 0.3, 0.4, 1],  # label 1: last class, both miss; victim disagrees
                           [0.0, 5, 0.1, 0.2, 0.3, 0.4]])  # label 1: both hit; victim agrees
    labels = torch.tensor([0, 0, 1, 1])
    victim = F.one_hot(torch.tensor([0, 5, 1, 1]), 6).float()
    model = Fixed(logits).train()
    out = fidelity_and_accuracy(model, torch.arange(4).float(), labels, victim, batch_size=3)
    assert model.training  # mode restored
    assert out == pytest.approx({"top1": 50.0, "top5": 50.0, "agreement": 75.0})
    # with 3 classes top-5 is top-3: every label is in it
    out3 = fidelity_and_accuracy(Fixed(logits[:, :3]), torch.arange(4).float(), labels, victim[:, :3])
    assert out3["top5"] == pytest.approx(100.0)
