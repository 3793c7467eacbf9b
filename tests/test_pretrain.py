"""The attacker's self-supervised pre-training (pretrain.py): MoCo's queue and momentum update by
hand, its loss against a naive loop, the key encoder without gradient, SimSiam's stop-gradient,
rotation labels, and each method's step running in the one training loop."""
import math

import pytest
import torch
from torch import nn

from attacks.pretrain import (
    PRETRAIN,
    MoCo,
    MoCoQueue,
    build_pretrainer,
    moco_loss,
    momentum_update,
    rotations,
    simsiam_model,
    simsiam_step,
)
from data_aug import SimCLRAugment, get_dataset
from models import build_encoder
from simclr import Precision, epoch_batches, fit
from utils import get_logger

pytestmark = pytest.mark.usefixtures("one_thread")


def test_queue_enqueues_in_order_and_wraps():
    queue = MoCoQueue(dim=2, size=5)
    keys = torch.arange(14, dtype=torch.float32).view(7, 2)
    queue.enqueue(keys[:3])
    assert queue.ptr == 3 and torch.equal(queue.keys[:3], keys[:3])
    old = queue.keys[3:].clone()
    queue.enqueue(keys[3:7])  # 4 more: slots 3, 4, then wrap to 0, 1
    assert queue.ptr == 2
    assert torch.equal(queue.keys, torch.stack([keys[5], keys[6], keys[2], keys[3], keys[4]]))
    assert not torch.equal(queue.keys[3:], old)
    # more keys than the queue holds: only the newest stay
    queue.enqueue(torch.arange(12, dtype=torch.float32).view(6, 2) + 100)
    assert queue.ptr == 2 and set(queue.keys[:, 0].tolist()) == {102.0, 104.0, 106.0, 108.0, 110.0}


def test_momentum_update_by_hand():
    query, key = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        query.weight.fill_(3.0), query.bias.fill_(-1.0), key.weight.fill_(1.0), key.bias.fill_(1.0)
    momentum_update(key, query, 0.9)
    assert key.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)  # 1.2
    assert key.bias.item() == pytest.approx(0.9 * 1.0 + 0.1 * -1.0)  # 0.8
    bn_q, bn_k = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    bn_q.running_mean.fill_(5.0)
    momentum_update(bn_k, bn_q, 0.99)
    assert torch.equal(bn_k.running_mean, bn_q.running_mean)  # buffers are copied
    with pytest.raises(ValueError):
        momentum_update(key, query, 1.5)


def test_moco_loss_against_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    q, k, negatives = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    tau = 0.2
    total = 0.0
    for i in range(4):
        qi = q[i] / q[i].norm()
        pos = math.exp(float(qi @ (k[i] / k[i].norm())) / tau)
        neg = sum(math.exp(float(qi @ (n / n.norm())) / tau) for n in negatives)
        total += -math.log(pos / (pos + neg))
    assert moco_loss(q, k, negatives, tau).item() == pytest.approx(total / 4, rel=1e-5)


def _images(n=32):
    return get_dataset("digits", "train").subset(range(n))


def test_moco_step_trains_the_query_encoder_only_and_fills_the_queue():
    torch.manual_seed(0)
    model = MoCo(build_encoder("resnet18", width=4), dim=16)
    queue = MoCoQueue(16, 40, generator=torch.Generator().manual_seed(1))
    before = queue.keys.clone()
    from attacks.pretrain import moco_step

    step = moco_step(model, SimCLRAugment(16), queue, momentum=0.9, temperature=0.2)
    key_before = [p.clone() for p in model.key.parameters()]
    loss, _, n = step((_images(8).images,), torch.Generator().manual_seed(2))
    loss.backward()
    assert n == 16 and torch.isfinite(loss)
    assert all(p.grad is None for p in model.key.parameters())  # the key encoder gets no gradient
    assert all(p.grad is not None for p in model.query.parameters() if p.requires_grad)
    assert queue.ptr == 8 and not torch.equal(queue.keys[:8], before[:8]) and torch.equal(queue.keys[8:], before[8:])
    assert torch.allclose(queue.keys[:8].norm(dim=1), torch.ones(8))
    # the key encoder moved towards the query encoder (theta_k <- 0.9 theta_k + 0.1 theta_q)
    for pk, pk0, pq in zip(model.key.parameters(), key_before, model.query.parameters()):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq.detach())


def test_simsiam_targets_get_no_gradient():
    """The projector outputs z get gradient only through the predictor (p = h(z)), never as targets."""
    torch.manual_seed(0)
    model = simsiam_model(build_encoder("resnet18", width=4))
    seen = {}

    def keep(module, inputs, out):
        seen["z"] = out

    model.projector.register_forward_hook(keep)
    loss, _, _ = simsiam_step(model, SimCLRAugment(16))((_images(8).images,), torch.Generator().manual_seed(0))
    z = seen["z"]
    grad_z = torch.autograd.grad(loss, z, retain_graph=True)[0]
    b = z.shape[0] // 2
    p = model.predictor(z)  # the same z, the same batch statistics: the same p as in the step
    cos = nn.functional.cosine_similarity
    through_predictor = -(cos(p[:b], z[b:].detach()).mean() + cos(p[b:], z[:b].detach()).mean()) / 2
    with_targets = -(cos(p[:b], z[b:]).mean() + cos(p[b:], z[:b]).mean()) / 2
    torch.testing.assert_close(loss, through_predictor)
    expected = torch.autograd.grad(through_predictor, z, retain_graph=True)[0]
    torch.testing.assert_close(grad_z, expected)
    wrong = torch.autograd.grad(with_targets, z)[0]
    assert not torch.allclose(grad_z, wrong)  # without stop-gradient the gradient would differ


def test_rotation_labels_follow_the_marked_corner():
    img = torch.zeros(1, 1, 3, 3)
    img[0, 0, 0, 0] = 1.0  # top-left
    rotated, labels = rotations(img)
    assert labels.tolist() == [0, 1, 2, 3]
    corners = [tuple((r[0] == 1).nonzero()[0].tolist()) for r in rotated]
    # counter-clockwise: top-left -> bottom-left -> bottom-right -> top-right
    assert corners == [(0, 0), (2, 0), (2, 2), (0, 2)]


@pytest.mark.parametrize("name", [n for n in PRETRAIN if n != "none"])
def test_each_method_trains_in_the_one_loop(name, tmp_path):
    """Measured over seeds 0-4 (6 epochs, 64 digits): rotation's loss fell from 1.36-1.41 to 0.91-1.05
    (the test asks for any fall); MoCo's rose from 2.7-2.9 to 3.97-4.12 as real keys replaced the
    queue's random ones (it asks for a rise); SimSiam's moved by only 0.03-0.05 at this size, too
    little to test across CPUs, so only its range and that the encoder trains are checked. How well
    each learns is measured by the classifier-extraction study, not here."""
    torch.manual_seed(0)
    data = _images(64)
    pre = build_pretrainer(name, build_encoder("resnet18", width=4), SimCLRAugment(16, crop_scale=(0.5, 1.0)),
                           moco_queue=64, moco_dim=16, moco_momentum=0.9)
    encoder = pre.model.encoder
    before = [p.detach().clone() for p in encoder.parameters()]
    result = fit(step=pre.step, batches=epoch_batches(data, 16, torch.device("cpu")), steps_per_epoch=4,
                 modules=[pre.model], optimizer=torch.optim.Adam(pre.model.parameters(), lr=3e-3), epochs=6,
                 base_lr=3e-3, seed=0, precision=Precision(torch.device("cpu")), save=lambda state: None,
                 run_dir=tmp_path, logger=get_logger(None), tensorboard=False)
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(x) for x in losses)
    assert all(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))  # every encoder tensor trained
    if name == "rotation":
        assert min(losses[3:]) < losses[0] - 0.1, losses
    elif name == "moco":
        assert losses[-1] > losses[0] + 0.3, losses
    else:
        assert all(-1.0 <= x <= 1.0 for x in losses), losses
    assert build_pretrainer("none", build_encoder("resnet18", width=4), None).model is None
    with pytest.raises(ValueError, match="unknown pre-training method"):
        build_pretrainer("byol", build_encoder("resnet18", width=4), None)
