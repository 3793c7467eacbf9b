"""The published SimSiam checkpoint format (the ImageNet victim of paper Tables 3 and 8): made
here from a randomly initialised torchvision ResNet50, never committed."""
import pytest
import torch
import torchvision
from torch import nn

from models import CheckpointError, load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _simsiam_file(path, drop=()):
    """A SimSiam-format checkpoint: ResNet50 whose fc is SimSiam's 3-layer projector, plus its predictor."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    d = net.fc.in_features
    net.fc = nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                           nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                           nn.Linear(d, 2048, bias=False), nn.BatchNorm1d(2048, affine=False))
    predictor = nn.Sequential(nn.Linear(2048, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                              nn.Linear(512, 2048))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a mis-mapped key shows in the outputs
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {f"module.encoder.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"module.predictor.{k}": v for k, v in predictor.state_dict().items()})
    for key in drop:
        del sd[key]
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {}}, path)
    net.fc = nn.Identity()
    return net.eval()


def test_simsiam_checkpoint_gives_the_backbone_with_imagenet_normalisation(tmp_path):
    path = tmp_path / "checkpoint_0099.pth.tar"
    reference = _simsiam_file(path)
    encoder, head, ckpt = load_encoder(path, with_head=True)
    assert (encoder.arch, encoder.stem, encoder.width, encoder.out_dim) == ("resnet50", "imagenet", 64, 2048)
    assert tuple(encoder.mean) == IMAGENET_MEAN and tuple(encoder.std) == IMAGENET_STD
    assert head is None and ckpt["kind"] == "simsiam" and ckpt["dataset"] == "imagenet"
    x = torch.rand(2, 3, 64, 64)  # images in [0, 1]: the encoder normalises them as SimSiam's loader did
    normalised = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(encoder.eval()(x), reference(normalised), atol=1e-4)


def test_simsiam_checkpoint_with_missing_keys_names_every_one(tmp_path):
    dropped = [f"module.encoder.layer4.2.bn{i}.running_mean" for i in (1, 2, 3)] + [
        "module.encoder.layer2.0.conv1.weight", "module.encoder.layer1.0.downsample.0.weight",
        "module.encoder.layer3.0.bn1.weight"]
    path = tmp_path / "broken.pth.tar"
    _simsiam_file(path, drop=dropped)
    with pytest.raises(CheckpointError) as err:
        load_encoder(path)
    message = str(err.value)
    assert "missing keys" in message and "more" not in message
    assert all(k[len("module.encoder."):] in message for k in dropped)  # all six, not the first four
    with pytest.raises(CheckpointError, match="resnet34"):
        _simsiam_file(path)
        load_encoder(path, arch="resnet34")


def test_simsiam_checkpoint_with_a_wrong_prefix_names_it(tmp_path):
    path = tmp_path / "moco_like.pth.tar"
    _simsiam_file(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k.replace("module.encoder.", "module.encoder_q."): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"no backbone under module\.encoder\.; its other keys start with "
                                              r"\[module\.encoder_q\.\]"):
        load_encoder(path)
