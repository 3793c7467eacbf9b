import pickle

import pytest
import torch
import torchvision

from models import (
    ARCHS,
    CheckpointError,
    build_encoder,
    build_mlp,
    load_checkpoint,
    load_encoder,
    load_state_dict_strict,
    save_checkpoint,
    simclr_head_dims,
    strip_prefixes,
)


@pytest.mark.parametrize("arch,width,dim", [("resnet18", 8, 64), ("resnet34", 4, 32), ("resnet50", 4, 128)])
@pytest.mark.parametrize("size", [8, 16, 33])
def test_encoder_output_dims(arch, width, dim, size):
    enc = build_encoder(arch, width=width).eval()
    out = enc(torch.rand(2, 3, size, size))
    assert out.shape == (2, dim) and enc.out_dim == dim


@pytest.mark.parametrize("arch", ARCHS)
def test_imagenet_stem_keys_match_torchvision(arch):
    ours = build_encoder(arch, stem="imagenet", width=64).state_dict()
    ref = getattr(torchvision.models, arch)().state_dict()
    ref = {k: v for k, v in ref.items() if not k.startswith("fc.")}
    assert set(ours) == set(ref)
    assert all(ours[k].shape == ref[k].shape for k in ours)


def test_torchvision_weights_give_torchvision_features():
    tv = torchvision.models.resnet18().eval()
    tv.fc = torch.nn.Identity()
    ours = build_encoder("resnet18", stem="imagenet", width=64).eval()
    load_state_dict_strict(ours, tv.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)


def test_normalisation_inside_encoder():
    enc = build_encoder("resnet18", width=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    plain = build_encoder("resnet18", width=4).eval()
    plain.load_state_dict(enc.state_dict())
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(enc(x), plain((x - 0.5) / 0.25), atol=1e-6)
    assert "_mean" not in enc.state_dict()  # torchvision-compatible keys
    with pytest.raises(ValueError):
        build_encoder("resnet18", mean=(0.5,), std=(0.2,))


def test_mlp_builder():
    head = build_mlp(simclr_head_dims(16, 8))
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head(torch.randn(3, 16)).shape == (3, 8)
    bn = build_mlp([16, 16, 16], batchnorm=True, last_bn=True, last_bn_affine=False)
    assert [type(m).__name__ for m in bn] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert bn[0].bias is None and bn[4].affine is False


def test_checkpoint_round_trip(tmp_path):
    enc = build_encoder("resnet18", width=4, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    head_kwargs = {"dims": simclr_head_dims(enc.out_dim, 8)}
    head = build_mlp(**head_kwargs)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()))
    path = save_checkpoint(tmp_path / "c.pt", encoder=enc, head=head, head_kwargs=head_kwargs,
                           epoch=3, optimizer=opt.state_dict(), config={"dataset": "digits", "lr": 0.1})
    enc2, head2, ckpt = load_encoder(path, with_head=True)
    assert ckpt["epoch"] == 3 and ckpt["config"]["lr"] == 0.1
    assert enc2.mean == enc.mean and enc2.width == 4
    x = torch.rand(2, 3, 8, 8)
    enc.eval(), enc2.eval(), head.eval(), head2.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), enc2(x))
        assert torch.equal(head(enc(x)), head2(enc2(x)))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_wrong_architecture_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", encoder=build_encoder("resnet18", width=4))
    with pytest.raises(CheckpointError, match="resnet18.*resnet34"):
        load_encoder(path, arch="resnet34")
    with pytest.raises(CheckpointError, match="width"):
        load_encoder(path, width=8)
    # a plain state dict of one architecture loaded as another: missing/unexpected keys named
    sd = build_encoder("resnet18", width=4).state_dict()
    torch.save({"state_dict": sd}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="holds a resnet18.*arch='resnet34'"):
        load_encoder(tmp_path / "plain.pt", arch="resnet34", width=4)
    del sd["layer4.1.conv2.weight"]
    torch.save({"state_dict": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="missing keys .*layer4.1.conv2"):
        load_encoder(tmp_path / "broken.pt")


def test_prefixes_are_stripped(tmp_path):
    enc = build_encoder("resnet18", width=4)
    sd = {f"module._orig_mod.{k}": v for k, v in enc.state_dict().items()}
    assert set(strip_prefixes(sd)) == set(enc.state_dict())
    torch.save({"state_dict": sd}, tmp_path / "ddp.pt")
    enc2, _, _ = load_encoder(tmp_path / "ddp.pt", arch="resnet18", width=4)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), enc2.state_dict().values()))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    good = save_checkpoint(tmp_path / "good.pt", encoder=build_encoder("resnet18", width=4))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/sslsteal_pwned_marker",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    import os
    marker = "/tmp/sslsteal_pwned_marker"
    if os.path.exists(marker):
        os.unlink(marker)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not os.path.exists(marker)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not os.path.exists(marker)
