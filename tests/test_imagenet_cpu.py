"""The CPU-scale ImageNet stand-in: our encoders written in the published SimSiam checkpoint
format (models.save_simsiam), in-memory image sets written as ImageNet image folders
(data_aug.write_image_folder), and scripts/imagenet_cpu.py that builds both."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from data_aug import ImageSet, get_dataset, write_image_folder
from models import build_encoder, load_encoder, save_simsiam
from models.checkpoint import is_simsiam
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROOT = Path(__file__).resolve().parent.parent


def _tiny_encoder(stem: str, arch: str = "resnet18"):
    torch.manual_seed(1)
    encoder = build_encoder(arch, stem=stem, width=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a mis-mapped key shows in the outputs
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return encoder.eval()


@pytest.mark.parametrize("stem,arch", [("imagenet", "resnet18"), ("cifar", "resnet18"), ("cifar", "resnet50")])
def test_save_simsiam_round_trips_through_load_encoder(tmp_path, stem, arch):
    encoder = _tiny_encoder(stem, arch)
    path = tmp_path / "checkpoint_0099.pth.tar"
    state = torch.random.get_rng_state()
    assert save_simsiam(path, encoder, seed=3) == path
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic: no temporary file left

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert is_simsiam(raw) and raw["arch"] == arch and raw["epoch"] == 0
    sd = raw["state_dict"]
    d = encoder.out_dim
    assert tuple(sd["module.encoder.fc.0.weight"].shape) == (d, d)
    assert tuple(sd["module.encoder.fc.6.weight"].shape) == (d, d) and "module.encoder.fc.6.bias" in sd
    assert "module.encoder.fc.7.running_var" in sd and "module.encoder.fc.7.weight" not in sd  # affine=False
    assert tuple(sd["module.predictor.0.weight"].shape) == (max(d // 4, 1), d)
    assert tuple(sd["module.predictor.3.bias"].shape) == (d,)
    assert sd["module.encoder.conv1.weight"].shape[-1] == (7 if stem == "imagenet" else 3)

    loaded, head, ckpt = load_encoder(path)
    assert head is None and ckpt["kind"] == "simsiam"
    assert (loaded.arch, loaded.stem, loaded.width) == (arch, stem, 4)
    assert tuple(loaded.mean) == IMAGENET_MEAN and tuple(loaded.std) == IMAGENET_STD
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), encoder(x), atol=1e-6)


def test_save_simsiam_head_sizes_and_seed(tmp_path):
    encoder = _tiny_encoder("cifar")
    a = save_simsiam(tmp_path / "a.pth.tar", encoder, projector_dim=16, pred_dim=5, seed=0)
    b = save_simsiam(tmp_path / "b.pth.tar", encoder, projector_dim=16, pred_dim=5, seed=0)
    c = save_simsiam(tmp_path / "c.pth.tar", encoder, projector_dim=16, pred_dim=5, seed=1)
    sa, sb, sc = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b, c))
    assert tuple(sa["module.encoder.fc.6.weight"].shape) == (16, encoder.out_dim)
    assert tuple(sa["module.predictor.0.weight"].shape) == (5, 16)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["module.predictor.0.weight"], sc["module.predictor.0.weight"])


def _tiny_images(labels, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (len(labels), 3, size, size), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.tensor(labels), name="tiny", split="train", num_classes=3)


def test_write_image_folder_round_trips_exactly(tmp_path):
    train = _tiny_images([2, 0, 1, 0, 2, 1])
    folder = write_image_folder(train, tmp_path, "train")
    assert folder == tmp_path / "imagenet" / "train"
    assert sorted(p.name for p in folder.iterdir()) == ["n00000000", "n00000001", "n00000002"]
    assert sorted(p.name for p in (folder / "n00000002").iterdir()) == ["000000.png", "000004.png"]
    assert [p.name for p in (tmp_path / "imagenet").iterdir()] == ["train"]  # no temporary folder left
    back = get_dataset("imagenet", "train", root=tmp_path, image_size=8)
    order = torch.argsort(train.labels, stable=True)  # the reader lists images class by class
    assert torch.equal(back.labels, train.labels[order])
    assert torch.equal(back.images, train.images[order])

    val = _tiny_images([1, 1], seed=1)  # a split without every class still gets train's label numbers
    write_image_folder(val, tmp_path, "val")
    back = get_dataset("imagenet", "val", root=tmp_path, image_size=8)
    assert back.labels.tolist() == [1, 1] and torch.equal(back.images, val.images)

    with pytest.raises(UserError, match="already holds files"):
        write_image_folder(_tiny_images([0, 1, 2]), tmp_path, "train")
    assert len(get_dataset("imagenet", "train", root=tmp_path, image_size=8)) == 6  # untouched
    write_image_folder(_tiny_images([0, 1, 2], seed=2), tmp_path, "train", overwrite=True)
    assert len(get_dataset("imagenet", "train", root=tmp_path, image_size=8)) == 3
    assert sorted(p.name for p in (tmp_path / "imagenet").iterdir()) == ["train", "val"]


def test_write_image_folder_refuses_unlabelled_and_bad_names(tmp_path):
    with pytest.raises(UserError, match="no label"):
        write_image_folder(_tiny_images([0, -1, 1]), tmp_path, "train")
    with pytest.raises(UserError, match="every label"):
        write_image_folder(_tiny_images([0, 2]), tmp_path, "train")
    with pytest.raises(UserError, match="sorted order"):
        write_image_folder(_tiny_images([0, 1]), tmp_path, "train", class_names=["zebra", "ant"])
    assert not (tmp_path / "imagenet" / "train").exists()
    write_image_folder(_tiny_images([0, 1]), tmp_path, "train", class_names=["ant", "zebra"])
    assert get_dataset("imagenet", "train", root=tmp_path, image_size=8).labels.tolist() == [0, 1]


def test_cli_builds_folders_and_victim_and_keeps_them(tmp_path, script, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import imagenet_cpu

    victim = _tiny_encoder("cifar")
    from models import save_checkpoint
    save_checkpoint(tmp_path / "victim.pt", encoder=victim, kind="simclr", dataset="digitsm")
    out = tmp_path / "out"
    argv = ["--dataset", "digitsm", "--out", str(out), "--limit", "40", "--victim-checkpoint",
            str(tmp_path / "victim.pt")]
    imagenet_cpu.main(argv)
    printed = capsys.readouterr().out
    assert "wrote" in printed and "re-exported with ImageNet normalisation" in printed
    train = get_dataset("imagenet", "train", root=out, image_size=8)
    val = get_dataset("imagenet", "val", root=out, image_size=8)
    assert len(train) == len(val) == 40
    source = get_dataset("digitsm", "train").subset(range(40))
    order = torch.argsort(source.labels, stable=True)
    assert torch.equal(train.images, source.images[order]) and torch.equal(train.labels, source.labels[order])
    loaded, _, ckpt = load_encoder(out / "simsiam_victim.pth.tar")
    assert ckpt["kind"] == "simsiam"
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), victim(x), atol=1e-6)

    imagenet_cpu.main(argv)  # idempotent
    assert capsys.readouterr().out.count("kept") == 2
    with pytest.raises(UserError, match="--overwrite"):
        imagenet_cpu.main(["--dataset", "digitsm", "--out", str(out), "--limit", "30"])
    result = script(ROOT / "scripts" / "imagenet_cpu.py", "--dataset", "digitsm", "--out", out, "--limit", "30",
                    "--overwrite")
    assert result.returncode == 0, result.stderr
    assert len(get_dataset("imagenet", "train", root=out, image_size=8)) == 30
    result = script(ROOT / "scripts" / "imagenet_cpu.py", "--out", out, "--limit", "0")
    assert result.returncode == 2 and "--limit" in result.stderr
