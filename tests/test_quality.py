"""A short SimCLR run must learn something: its frozen representation beats the same
architecture at random initialisation under the same fair probe."""
import torch

import run
from data_aug import get_dataset
from linear_eval import linear_probe
from models import build_encoder, load_encoder
from models.checkpoint import encoder_kwargs


def test_short_simclr_run_beats_random_init(tmp_path):
    ckpt = run.main(["--dataset", "digitsm", "--width", "8", "--epochs", "12", "--device", "cpu",
                     "--seed", "0", "--logdir", str(tmp_path / "v")])
    encoder, _, meta = load_encoder(ckpt)
    assert meta["config"]["crop_min_scale"] == 0.8 and meta["config"]["hflip_p"] == 0.0
    train, test = get_dataset("digitsm", "train", image_size=16), get_dataset("digitsm", "test", image_size=16)
    cpu = torch.device("cpu")
    trained = linear_probe(encoder, train, test, device=cpu)["top1"]
    torch.manual_seed(0)
    random_init = linear_probe(build_encoder(**encoder_kwargs(encoder)), train, test, device=cpu)["top1"]
    print(f"trained {trained:.1f}% vs random {random_init:.1f}%")
    assert trained > random_init + 8.0
