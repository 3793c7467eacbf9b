"""The reference's CIFAR ResNet checkpoints (kuangliu style: ``shortcut`` modules, ``backbone.``
prefix, the SimCLR head as ``backbone.fc``) load here and compute the same function."""
import torch
import torch.nn.functional as F

from models import build_encoder, load_encoder
from service.victim import load_victim


def _bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def _kuangliu_forward(sd, x):
    """The reference's CIFAR ResNet18 written out from its description (docs/reference-behaviour.md
    1.1): 3x3 stem, no max-pool, basic blocks with a conv+BN ``shortcut`` where the shape changes,
    avg_pool2d(4) at 32 px, flatten."""
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for stage, stride in zip(range(1, 5), (1, 2, 2, 2)):
        for block in range(2):
            p = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            y = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=s, padding=1), sd, f"{p}.bn1"))
            y = _bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            short = out
            if f"{p}.shortcut.0.weight" in sd:
                short = _bn(F.conv2d(out, sd[f"{p}.shortcut.0.weight"], stride=s), sd, f"{p}.shortcut.1")
            out = F.relu(y + short)
    return F.avg_pool2d(out, 4).flatten(1)


def _reference_checkpoint(tmp_path, width=8):
    torch.manual_seed(0)
    ours = build_encoder("resnet18", stem="cifar", width=width)
    for m in ours.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    sd = {f"backbone.{k.replace('.downsample.', '.shortcut.')}": v for k, v in ours.state_dict().items()}
    d = ours.out_dim
    sd.update({"backbone.fc.0.weight": torch.randn(d, d), "backbone.fc.0.bias": torch.randn(d),
               "backbone.fc.2.weight": torch.randn(128, d), "backbone.fc.2.bias": torch.randn(128)})
    path = tmp_path / "cifar10_checkpoint_200_infonce.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
               path)
    return path, sd


def test_a_reference_victim_loads_and_computes_the_reference_function(tmp_path):
    path, sd = _reference_checkpoint(tmp_path)
    encoder, head, _ = load_encoder(path, with_head=True)
    assert (encoder.arch, encoder.stem, encoder.width) == ("resnet18", "cifar", 8)
    plain = {k[len("backbone."):]: v for k, v in sd.items()}
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    encoder.double().eval()
    head.double().eval()
    with torch.no_grad():
        h = encoder(x)
        want = _kuangliu_forward({k: v.double() for k, v in plain.items()}, x)
        assert torch.allclose(h, want, atol=1e-10)
        g = F.linear(F.relu(F.linear(want, plain["fc.0.weight"].double(), plain["fc.0.bias"].double())),
                     plain["fc.2.weight"].double(), plain["fc.2.bias"].double())
        assert torch.allclose(head(h), g, atol=1e-10)


def test_a_reference_victim_is_served(tmp_path):
    path, _ = _reference_checkpoint(tmp_path)
    victim = load_victim(str(path), dataset="cifar10")
    card = victim.model_card()
    assert card["arch"] == "resnet18" and card["has_head"] and victim.image_size == 32


def test_a_kuangliu_supervised_checkpoint_loads(tmp_path):
    ours = build_encoder("resnet18", stem="cifar", width=4)
    sd = {f"module.{k.replace('.downsample.', '.shortcut.')}": v for k, v in ours.state_dict().items()}
    sd.update({"module.linear.weight": torch.randn(10, ours.out_dim), "module.linear.bias": torch.randn(10)})
    torch.save({"net": sd, "acc": 95.0, "epoch": 200}, tmp_path / "ckpt.pth")
    encoder, head, ckpt = load_encoder(tmp_path / "ckpt.pth", with_head=True)
    assert torch.equal(head[0].weight, sd["module.linear.weight"])  # the classifier, as a head
    assert ckpt["kind"] == "supervised"
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), encoder.state_dict().values()))
