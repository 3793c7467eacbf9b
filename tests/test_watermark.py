"""The watermarked victim, the watermark success rate, the ownership t-test and watermark.py."""
import json
import math

import pytest
import torch
from scipy import stats
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import run
import steal
import watermark
from data_aug import rotate
from defenses.ownership import private_public_images
from defenses.watermark import (
    build_predictor,
    load_predictor,
    ownership_test,
    predictor_correct,
    retrained_wsr,
    rotated_features,
    watermark_views,
    with_watermark,
)
from models import load_checkpoint, load_encoder
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny watermarked victim that learns its watermark within seconds: digits at 16 px, width 4,
# 8 epochs, the watermark term weighted 5 (measured WSR on its first 300 training images: 72.3 /
# 77.5 / 77.2% for seeds 0-2)
TINY = ["--dataset", "digits", "--width", "4", "--image-size", "16", "-b", "64", "--epochs", "8", "--lr", "5e-3",
        "--device", "cpu", "--watermark", "True", "--watermark-weight", "5"]


@pytest.fixture(scope="module")
def wm_victim(tmp_path_factory):
    """(checkpoint path, the predictor's initial weights) of the tiny watermarked victim."""
    seen = {}
    build = run.build_predictor

    def capture(*args, **kwargs):
        predictor = build(*args, **kwargs)
        seen["init"] = {k: v.clone() for k, v in predictor.state_dict().items()}
        return predictor

    run.build_predictor = capture
    try:
        ckpt = run.main(TINY + ["--logdir", str(tmp_path_factory.mktemp("wm") / "victim")])
    finally:
        run.build_predictor = build
    return ckpt, seen["init"]


@pytest.fixture(scope="module")
def plain_victim(tmp_path_factory):
    args = [a for a in TINY if a not in ("--watermark", "True", "--watermark-weight", "5")]
    return run.main(args + ["--seed", "1", "--logdir", str(tmp_path_factory.mktemp("plain") / "victim")])


# ----------------------------------------------------------------------------- rotations


def test_rotate_matches_torchvision_and_rot90():
    x = torch.rand(3, 3, 9, 9)
    for angle in (0.0, 30.0, 90.0, 137.5, 200.0, 359.0):
        expected = TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST)
        assert torch.equal(rotate(x, torch.full((3,), angle)), expected), angle
    even = torch.rand(2, 3, 8, 8)
    assert torch.equal(rotate(even, torch.tensor([90.0, 90.0])), torch.rot90(even, 1, (2, 3)))
    assert torch.equal(rotate(even, torch.tensor([180.0, 180.0])), torch.flip(even, (2, 3)))
    # per-image angles: each image is rotated by its own
    both = rotate(even, torch.tensor([0.0, 90.0]))
    assert torch.equal(both[0], even[0]) and torch.equal(both[1], torch.rot90(even[1], 1, (1, 2)))


def test_rotation_labels_on_a_hand_made_image():
    """A white square above the centre: a counter-clockwise turn by an angle in (0, 180) moves it
    to the left half (label 0), an angle in (180, 360) to the right half (label 1)."""
    img = torch.zeros(1, 3, 15, 15, dtype=torch.uint8)
    img[:, :, 1:4, 6:9] = 255
    views, labels = watermark_views(img.repeat(200, 1, 1, 1), torch.Generator().manual_seed(0))
    assert views.shape == (400, 3, 15, 15) and labels.tolist() == [0] * 200 + [1] * 200
    mass = views[:, 0]
    assert (mass.sum(dim=(1, 2)) > 0).all()  # the square stays inside the image
    centre_x = (mass * torch.arange(15.0)).sum(dim=(1, 2)) / mass.sum(dim=(1, 2))
    assert (centre_x[:200] <= 7.5).all() and (centre_x[200:] >= 6.5).all()
    assert (centre_x[:200] < 7).float().mean() > 0.9 and (centre_x[200:] > 7).float().mean() > 0.9


def test_watermark_term_is_added_to_the_step_and_trains_encoder_and_predictor():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))
    predictor = build_predictor(6)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    base = lambda batch, gen: (torch.tensor(1.5, requires_grad=True), {"x": 1.0}, 4)  # noqa: E731
    loss, metrics, n = with_watermark(base, encoder, predictor, 2.0)((images,), torch.Generator().manual_seed(3))
    views, labels = watermark_views(images, torch.Generator().manual_seed(3))
    ce = nn.functional.cross_entropy(predictor(encoder(views)), labels)
    assert math.isclose(loss.item(), 1.5 + 2.0 * ce.item(), rel_tol=1e-6)
    assert n == 4 + 8 and metrics["x"] == 1.0 and math.isclose(metrics["wm_loss"], ce.item(), rel_tol=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in list(encoder.parameters())
               + list(predictor.parameters()))


# ----------------------------------------------------------------------------- the watermarked victim


def test_watermarked_victim_trains_its_predictor_and_carries_the_watermark(wm_victim):
    ckpt_path, init = wm_victim
    ckpt = load_checkpoint(ckpt_path)
    record = ckpt["watermark"]
    assert record["task"] == "rotation" and record["weight"] == 5.0 and record["kwargs"]["dims"] == [32, 32, 2]
    # the predictor was trained: every weight moved from its initialisation
    assert all(not torch.equal(record["state_dict"][k], init[k]) for k in init if k.endswith("weight"))
    history = [json.loads(line) for line in (ckpt_path.parent / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["wm_loss"] < history[0]["wm_loss"]
    encoder, _, _ = load_encoder(ckpt_path)
    images, _ = private_public_images("digits", 16, n=300, with_public=False)
    feats, labels = rotated_features(encoder, images, seed=0)
    wsr = 100 * predictor_correct(load_predictor(ckpt), feats, labels).mean().item()
    assert wsr > 62.0  # measured 72-78 over seeds; chance is 50
    # the service never holds the predictor: it answers representations or projection-head outputs only
    from service.victim import build_service, load_victim

    service = build_service(load_victim(str(ckpt_path)))
    assert set(service.backend.out_dims) == {"representation", "head", "representation+head"}
    assert service.backend.out_dims["head"] == 128
    assert "watermark" not in json.dumps(service.info())


def test_wsr_of_a_constant_encoder_is_one_half():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 6)

    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    feats, labels = rotated_features(Constant(), images, seed=0)
    for seed in range(3):
        torch.manual_seed(seed)
        assert predictor_correct(build_predictor(6), feats, labels).mean().item() == 0.5


def test_retrained_wsr_reads_what_the_features_hold():
    labels = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(200, dtype=torch.long)])
    noise = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    informative = noise.clone()
    informative[:, 0] += 4 * labels.float()
    assert retrained_wsr(informative, labels) > 90  # the Bayes rate is 97.7
    assert abs(retrained_wsr(noise, labels) - 50) < 12


def test_ownership_test_matches_scipy_and_gives_each_verdict():
    gen = torch.Generator().manual_seed(0)
    suspect = (torch.rand(2000, generator=gen) < 0.6).float()
    independent = (torch.rand(2000, generator=gen) < 0.5).float()
    victim = (torch.rand(2000, generator=gen) < 0.8).float()
    out = ownership_test(suspect, independent, victim=victim)
    ref = stats.ttest_ind(suspect.double().numpy(), independent.double().numpy(), alternative="greater")
    assert math.isclose(out["t"], ref.statistic, rel_tol=1e-9) and math.isclose(out["p"], ref.pvalue, rel_tol=1e-9)
    assert math.isclose(out["delta_mu"], (suspect.mean() - independent.mean()).item(), rel_tol=1e-6)
    assert out["verdict"] == "stolen"
    ref1 = stats.ttest_1samp(suspect.double().numpy(), 0.5, alternative="greater")
    assert math.isclose(out["p_chance"], ref1.pvalue, rel_tol=1e-9)
    assert ownership_test(independent, independent, victim=victim)["verdict"] == "not stolen"
    # an independent encoder below chance does not make a chance-level suspect look stolen
    below = (torch.rand(2000, generator=gen) < 0.44).float()
    at_chance = (torch.arange(2000) % 2).float()
    out = ownership_test(at_chance, below, victim=victim)
    assert out["p"] < 1e-3 and out["p_chance"] == 0.5 and out["verdict"] == "not stolen"
    # a watermark the victim itself does not carry says nothing
    assert ownership_test(suspect, independent, victim=independent)["verdict"] == "inconclusive"
    with pytest.raises(UserError, match="alpha"):
        ownership_test(suspect, independent, alpha=1.5)


# ----------------------------------------------------------------------------- steal.py and watermark.py


def test_stolen_copy_reports_its_wsr(wm_victim, tmp_path):
    ckpt = steal.main(["--victim-checkpoint", str(wm_victim[0]), "--losstype", "mse", "--num_queries", "256",
                       "-b", "64", "--epochs", "5", "--device", "cpu", "--watermark", "True",
                       "--logdir", str(tmp_path / "s")])
    record = json.loads((tmp_path / "s" / "watermark.json").read_text())
    assert record["stolen_checkpoint"] == str(ckpt) and record["n_views"] == 2 * 1000
    assert record["wsr_victim"] > 62.0 and 0 <= record["wsr_stolen"] <= 100
    assert "Watermark accuracy is" in (tmp_path / "s" / "train.log").read_text()


def test_watermark_cli_on_the_victim_an_unrelated_model_and_bad_input(wm_victim, plain_victim, tmp_path, script):
    results = tmp_path / "r.jsonl"
    common = ["--victim-checkpoint", str(wm_victim[0]), "--n", "300", "--results", str(results)]
    watermark.main(common + ["--suspect", "victim", "--independent", str(plain_victim), "--tests", "wsr", "ttest",
                             "--label", "victim"])
    watermark.main(common + ["--suspect", str(plain_victim), "--tests", "wsr", "--label", "unrelated"])
    records = [json.loads(line) for line in results.read_text().splitlines()]
    victim_row, unrelated = records[0]["metrics"], records[1]["metrics"]
    assert victim_row["wsr"]["wsr_suspect"] == victim_row["wsr"]["wsr_victim"] > 62.0
    assert victim_row["ttest"]["verdict"] == "stolen" and victim_row["ttest"]["p"] < 1e-6
    assert abs(unrelated["wsr"]["wsr_suspect"] - 50.0) < 10.0
    # a victim without a watermark predictor, asked for a WSR: one sentence
    r = script("watermark.py", "--victim-checkpoint", plain_victim, "--suspect", "victim", "--n", "50")
    assert r.returncode == 2 and "has no watermark predictor" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    # a suspect of another representation size: one sentence naming both sizes
    wide = run.main(["--dataset", "digits", "--width", "8", "--image-size", "16", "-b", "64", "--epochs", "1",
                     "--device", "cpu", "--logdir", str(tmp_path / "wide")])
    r = script("watermark.py", "--victim-checkpoint", wm_victim[0], "--suspect", wide, "--n", "50")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "64-d" in last and "32-d" in last and "Traceback" not in r.stderr
    # ttest without an independent encoder
    with pytest.raises(UserError, match="--independent"):
        watermark.main(["--victim-checkpoint", str(wm_victim[0]), "--suspect", "victim", "--tests", "ttest",
                        "--n", "50"])


def test_query_augmentation_rotation_changes_the_queries_not_their_count(wm_victim, tmp_path):
    logs = {}
    for aug in ("none", "standard", "rotation"):
        ckpt = steal.main(["--victim-checkpoint", str(wm_victim[0]), "--losstype", "mse", "--num_queries", "64",
                           "-b", "32", "--epochs", "1", "--device", "cpu", "--query-aug", aug,
                           "--logdir", str(tmp_path / aug)])
        meta = load_checkpoint(ckpt)
        assert meta["queries_used"] == 64 and meta["config"]["query_aug"] == aug
        logs[aug] = meta["config"]["local_aug"]
    assert logs["standard"] == logs["rotation"] == "none"  # the queries are augmented views already
    with pytest.raises(UserError, match="--query-aug none"):
        steal.main(["--victim-checkpoint", str(wm_victim[0]), "--losstype", "mse", "--num_queries", "64",
                    "--n-views", "2", "--query-aug", "none", "--device", "cpu", "--logdir", str(tmp_path / "x")])


def test_query_views_of_each_augmentation():
    from attacks import encoder as attack
    from data_aug import ImageSet, SimCLRAugment, to_float

    images = ImageSet(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), torch.zeros(6, dtype=torch.long))
    aug = SimCLRAugment(8)
    built = {q: attack.QueryViews.build(images, 1, 0, torch.device("cpu"), aug, q).inputs
             for q in ("none", "standard", "rotation")}
    assert torch.equal(built["none"], to_float(images.images))
    assert not torch.equal(built["standard"], built["none"]) and not torch.equal(built["rotation"], built["standard"])
    # rotation = the standard views (same draws) turned by an angle drawn after them
    gen = torch.Generator().manual_seed(0)
    view = aug(images.images, gen)
    angles = 360.0 * torch.rand(6, generator=gen, dtype=torch.float64)
    assert torch.equal(built["rotation"], rotate(view, angles))
