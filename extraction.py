"""Classic extraction of a downstream classifier, and FGSM transferability (Appendix A.2).

The library behind ``knockoff.py``, ``steallabels.py`` and ``extract.py`` (their docstrings
say what the experiment is): the owner builds a victim *classifier* behind a
:class:`victim.VictimService` answering labels or logits; the attacker trains its own
classifier on the answers through a :class:`client.QueryClient`; then accuracy, fidelity and
FGSM transfer are measured. The victim classifier (``--victimtype``) is either a SimCLR-type
victim encoder with a linear probe fitted on the downstream task (``simclr``), or a
supervised victim's own classifier, its encoder and the linear layer it was trained with
(``supervised``, a simclrsup.py checkpoint). With ``--victim-url`` the classifier is one served
by ``serve.py`` (the owner's side stays in the server; its task and architecture come from the
service's card), and the victim's side of the measurements is bought through the service.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from data_aug import DATASETS, dataset_info, get_dataset, split_holdout, to_float
from probe import extract_features, train_probe
from distill import distillation_loss
from models import EncoderWithHead, build_encoder, build_mlp, save_checkpoint
from simclr import Precision, fit
from attack import image_batches, query_pool, query_set
from utils import (HelpFormatter, UserError, add_common_args, add_reference_args, atomic_write_text, get_logger,
                   pick_device, prepare_run_dir, seed_everything, setup_threads, str2bool, write_config)
from utils import run_dir as run_dir_named
from client import QueryClient, add_http_victim_args
from errors import QueryBudgetExceeded
from victim import VICTIM_TYPES, ClassifierBackend, LoadedVictim, VictimService, check_victim_type, load_victim

# the attacker's training by mode, and by victim type where it differs: against a supervised victim
# the reference's standard mode used SGD (with --momentum and weight decay 5e-4) instead of Adam, at
# its Adam learning rate 3e-4. Measured against a 94.4% mnistm5k supervised victim (simclrsup.py
# defaults; 500 label queries, 100 epochs, momentum 0.9, seeds 0 / 1): SGD at 3e-4 reached 14.7 / 8.9%,
# 0.01 26.9 / 32.0%, 0.05 56.9 / 68.0%, 0.1 82.4 / 69.8%, 0.2 82.7 / 79.8%; 0.1 is knockoff's rate.
MODE_DEFAULTS = {"standard": {"lr": 3e-4, "optimizer": "adam", "epochs": 100},
                 "knockoff": {"lr": 0.1, "optimizer": "sgd", "epochs": 100}}
VICTIMTYPE_DEFAULTS = {"supervised": {"standard": {"lr": 0.1, "optimizer": "sgd"}}}

# the reference's no-effect flags of steallabels.py (and, with -dataset, of extract.py)
REFERENCE_FLAGS = ("folder_name", "num_labeled_unused", "epochstrain")


def make_optimizer(config: dict, params) -> torch.optim.Optimizer:
    """The attacker's optimizer: SGD with ``--momentum``, or Adam; ``--lr`` and ``--wd``."""
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"])
    return torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])


def victim_classifier(loaded: LoadedVictim, victimtype: str, train=None, *, num_classes: int, seed: int = 0,
                      device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """The owner's classifier and a description of it.

    ``simclr``: the frozen encoder with a linear probe fitted on ``train`` (the downstream
    task's training split); ``supervised``: the encoder with the classifier saved as the
    checkpoint's head (the one it was trained with), nothing fitted.
    """
    check_victim_type(loaded, victimtype)
    venc = loaded.encoder.to(device).eval().requires_grad_(False)
    if victimtype == "supervised":
        head = loaded.head.to(device).eval().requires_grad_(False)
        out = [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features
        if out != num_classes:
            raise UserError(f"the supervised victim {loaded.path} classifies {out} classes, but the task has "
                            f"{num_classes}; use its own dataset as --dataset-test")
        return EncoderWithHead(venc, head).eval(), f"supervised {venc.arch} with its own classifier"
    feats, labels = extract_features(venc, train, device=device)
    probe, _, _ = train_probe(feats, labels, num_classes=num_classes, seed=seed, device=device)
    return EncoderWithHead(venc, probe).eval(), f"{venc.arch} + linear probe"


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One-step FGSM (Goodfellow et al. 2015) on images in [0, 1]: ``clip(x + eps * sign(grad))``."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        grad, = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def transfer_rates(stolen: nn.Module, victim: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list,
                   seed: int = 0) -> list[dict]:
    """FGSM made on ``stolen``: error rates it causes on ``victim`` (on the images the victim got
    right), on ``stolen`` itself, and the victim's rate under random-sign noise of the same size."""
    gen = torch.Generator().manual_seed(seed)
    right = predict(victim, x) == y
    xs, ys = x[right], y[right]
    rows = []
    for eps in eps_list:
        adv = torch.cat([fgsm(stolen, xs[i:i + 256], ys[i:i + 256], eps) for i in range(0, len(xs), 256)])
        noise = torch.randint(0, 2, xs.shape, generator=gen).to(xs) * 2 - 1
        noisy = (xs + eps * noise).clamp(0, 1)
        rows.append({"eps": eps, "n": int(right.sum()),
                     "victim_fooled_%": 100 * (predict(victim, adv) != ys).float().mean().item(),
                     "stolen_fooled_%": 100 * (predict(stolen, adv) != ys).float().mean().item(),
                     "victim_fooled_by_noise_%": 100 * (predict(victim, noisy) != ys).float().mean().item()})
    return rows


def build_parser(mode: str, output: str, doc: str, *, victimtype: str = "simclr", momentum: float = 0.9,
                 reference_flags: tuple = REFERENCE_FLAGS) -> argparse.ArgumentParser:
    """The flags shared by steallabels.py, knockoff.py and extract.py, with that script's defaults."""
    p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    p.add_argument("--victim-checkpoint", default=None,
                   help="the victim (default: run.py's default run directory for --dataset, or simclrsup.py's "
                        "with --victimtype supervised)")
    p.add_argument("--victimtype", default=victimtype, choices=sorted(VICTIM_TYPES),
                   help="simclr: the victim classifier is a SimCLR-type encoder (run.py) with a linear probe "
                        "fitted on --dataset-test; supervised: it is a supervised victim's own classifier "
                        "(simclrsup.py: its encoder and the linear layer it was trained with)")
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the victim encoder's dataset (default: from its checkpoint)")
    p.add_argument("--dataset-test", dest="dataset_test", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the downstream task of the victim classifier (default: the victim's dataset)")
    p.add_argument("--datasetsteal", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="query dataset (default: the downstream dataset's test split without its holdout)")
    p.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    p.add_argument("--num_queries", type=int, default=500, help="query budget (one query per image)")
    p.add_argument("--modeloutput", default=output, choices=["labels", "logits", "probabilities", "top5"],
                   help="what the victim answers: the predicted label, the logits, the softmax probabilities, or "
                        "the 5 largest probabilities (the rest 0); see victim.ClassifierBackend for what each "
                        "costs the attacker")
    p.add_argument("--mode", default=mode, choices=["standard", "knockoff"],
                   help="standard: CE on labels with Adam (SGD against a supervised victim, as the reference); "
                        "knockoff: soft CE on probabilities with SGD")
    p.add_argument("-a", "--arch", dest="archstolen", default=None,
                   help="the attacker's encoder architecture (default: the victim's)")
    p.add_argument("--widthstolen", type=int, default=None, help="the attacker's encoder width (default: the victim's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 100)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=64, help="batch size")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help="learning rate (by mode: standard 3e-4 with Adam, or 0.1 with SGD against a supervised "
                        "victim; knockoff 0.1)")
    p.add_argument("--momentum", type=float, default=momentum,
                   help="SGD momentum, used whenever the attacker trains with SGD (knockoff mode, and standard "
                        "mode against a supervised victim); the reference's default is 0.9 in steallabels.py "
                        "and 0.5 in extract.py")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=5e-4, help="weight decay")
    p.add_argument("--fgsm-eps", type=float, nargs="+", default=[2 / 255, 4 / 255, 8 / 255, 16 / 255],
                   help="FGSM step sizes (on [0, 1] images) for the transferability test")
    p.add_argument("--holdout", type=int, default=None, help="evaluation images at the end of the test split")
    p.add_argument("--logdir", default=None,
                   help="run directory (default: runs/<mode>_<output>_<queries>_s<seed>, with _supervised "
                        "before _s<seed> for a supervised victim)")
    p.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    add_http_victim_args(p)
    add_reference_args(p, *reference_flags)
    add_common_args(p)
    return p


def setup(config: dict) -> torch.device:
    """The device (recorded in ``config``), threads and seeds: the first thing a run does."""
    device = pick_device(config["device"], config["gpu_index"])
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    return device


def open_victim(config: dict) -> tuple[torch.device, LoadedVictim]:
    """The owner's side of a classifier-extraction run: the device (recorded in ``config``),
    threads and seeds set, and the victim checkpoint loaded and checked against ``--victimtype``."""
    device = setup(config)
    loaded = load_victim(config["victim_checkpoint"], dataset=config["dataset"], seed=config["seed"],
                         victimtype=config["victimtype"])
    check_victim_type(loaded, config["victimtype"])
    return device, loaded


def fit_victim_classifier(loaded: LoadedVictim, victimtype: str, task: str, *, data=None, seed: int = 0,
                          device: torch.device | str = "cpu") -> tuple[nn.Module, str, int]:
    """The owner's classifier for the downstream ``task`` (:func:`victim_classifier` with the
    task's train split), ``(classifier, description, number of classes)``; shared by this module's
    in-process runs and ``serve.py``. It leaves the caller's random state as it found it, so an
    attack run after it starts from the same state whether the victim is here or served elsewhere."""
    if victimtype == "supervised" and task != loaded.dataset:
        raise UserError(f"a supervised victim's classifier answers its own task ({loaded.dataset}), not "
                        f"--dataset-test {task}; drop --dataset-test or use --victimtype simclr")
    info = dataset_info(task)
    if not info.num_classes:
        raise UserError(f"{task} has no labels; pick a labelled --dataset-test")
    with torch.random.fork_rng(devices=[]):  # the probe's layer is built from the global generator
        train = None if victimtype == "supervised" else get_dataset(task, info.train_split, root=data,
                                                                    image_size=loaded.image_size)
        clf, described = victim_classifier(loaded, victimtype, train, num_classes=info.num_classes, seed=seed,
                                           device=device)
    return clf, described, info.num_classes


class ServedClassifier:
    """A classifier served over HTTP, as a callable for :func:`predict` and :func:`transfer_rates`:
    its scores for a batch (the output the connection asks for; its argmax is the predicted class
    whichever it is), bought through a :class:`client.QueryClient` keyed by each image's bytes as
    sent, so an image asked twice (the evaluation set, whose predictions both measurements need)
    is paid once."""

    def __init__(self, client: QueryClient):
        self.client = client

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import hashlib

        from client import wire_images

        sent = wire_images(x.detach()).cpu()
        keys = [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in sent]
        return self.client.query(x, keys=keys)


def evaluation_queries(n_eval: int, n_eps: int) -> int:
    """At most how many answers measuring a served victim takes: its predictions on the evaluation
    images, and on an adversarial and a noisy copy of each at every FGSM step size."""
    return n_eval * (1 + 2 * n_eps)


def run(config: dict) -> dict:
    """The whole experiment from parsed flags: the owner's classifier (or, with ``--victim-url``, a
    classifier served by serve.py), the attack, the tests."""
    config = dict(config, arch=None, width=None, n_views=1, force=False)
    config.setdefault("victimtype", "simclr")
    config.setdefault("momentum", 0.9)
    defaults = {**MODE_DEFAULTS[config["mode"]],
                **VICTIMTYPE_DEFAULTS.get(config["victimtype"], {}).get(config["mode"], {})}
    for key, value in defaults.items():
        if config.get(key) is None:
            config[key] = value
    served = bool(config.get("victim_url"))
    if served:  # the attacker knows the service's card, nothing more
        from client import open_http_victim

        device = setup(config)
        connection, record = open_http_victim(config, output=config["modeloutput"],
                                              owner_flags={"victim_checkpoint": "--victim-checkpoint"})
        card = connection.info
        if "task" not in card:
            raise UserError(f"the service at {config['victim_url']} answers an encoder, not a classifier; serve "
                            f"one with `serve.py --victimtype supervised` or `serve.py --outputs probabilities ...`")
        if config["dataset_test"] not in (None, card["task"]):
            raise UserError(f"--dataset-test {config['dataset_test']} differs from the task of the classifier served "
                            f"at {config['victim_url']} ({card['task']}); drop --dataset-test")
        config.update(record, dataset_test=card["task"])
        victim = {key: card[key] for key in ("arch", "width", "stem")}
    else:
        device, loaded = open_victim(config)
        config.update(victim_checkpoint=str(loaded.path), dataset=loaded.dataset, image_size=loaded.image_size)
        if config["victimtype"] == "supervised" and config["dataset_test"] not in (None, loaded.dataset):
            raise UserError(f"a supervised victim's classifier answers its own task ({loaded.dataset}), not "
                            f"--dataset-test {config['dataset_test']}; drop --dataset-test or use --victimtype simclr")
        victim = {key: getattr(loaded.encoder, key) for key in ("arch", "width", "stem")}
    task = config["dataset_test"] = config["dataset_test"] or config["dataset"]
    info = dataset_info(task)
    if not info.num_classes:
        raise UserError(f"{task} has no labels; pick a labelled --dataset-test")
    size = config["image_size"]
    query_part, evaluation = split_holdout(get_dataset(task, info.test_split, root=config["data"], image_size=size),
                                           config["holdout"])
    # queries: the downstream test split without its holdout, unless --datasetsteal names another set
    pool, _ = query_pool(task, size, datasetsteal=config["datasetsteal"], holdout=len(evaluation), data=config["data"])
    images = query_set(pool, config["num_queries"], 1)
    if served:  # the attack and the measurements of the victim, paid for before the first query
        from client import service_remaining

        n_eval = evaluation_queries(len(evaluation), len(config["fgsm_eps"]))
        left = service_remaining(connection)
        if left is not None and left < len(images) + n_eval:
            raise QueryBudgetExceeded(
                f"the victim service has {left} queries left on this run's account(s), fewer than the "
                f"{len(images) + n_eval} this run needs ({len(images)} for the attack, --num_queries, and up to "
                f"{n_eval} to measure the victim on {len(evaluation)} evaluation images and their FGSM and noise "
                f"copies); lower --num_queries, --holdout or --fgsm-eps, or use an account with a larger budget")
    if config["logdir"] is None:
        parts = [config["mode"], config["modeloutput"], config["num_queries"]]
        parts += ["supervised"] if config["victimtype"] == "supervised" else []
        config["logdir"] = str(run_dir_named(*parts, seed=config["seed"]))
    run_dir = prepare_run_dir(config["logdir"])
    if (run_dir / "results.json").exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds results; pass --clear or another --logdir")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_config(run_dir, config)
    logger = get_logger(run_dir)

    x_eval, y_eval = to_float(evaluation.images).to(device), evaluation.labels.to(device)
    if served:
        api = QueryClient(connection, budget=config["num_queries"], log_path=run_dir / "queries.jsonl")
    else:
        # the victim classifier: the frozen victim encoder with a linear probe fitted on the downstream
        # train split (simclr), or the supervised victim's own classifier
        victim_clf, described, _ = fit_victim_classifier(loaded, config["victimtype"], task, data=config["data"],
                                                         seed=config["seed"], device=device)
        victim_pred = predict(victim_clf, x_eval)
        victim_acc = 100 * (victim_pred == y_eval).float().mean().item()
        logger.info(f"victim classifier ({described} on {task}): {victim_acc:.2f}% on {evaluation.split}")
        service = VictimService(ClassifierBackend(victim_clf, info.num_classes, device=device),
                                answers=config["modeloutput"], info={"dataset": task, "input_size": size})
        api = QueryClient(service.connect("attacker"), budget=config["num_queries"],
                          log_path=run_dir / "queries.jsonl")
    x_q = to_float(images.images).to(device)
    answers = api.query(x_q, keys=list(range(len(x_q))))  # the attacker buys every answer once
    api.end_epoch(0)
    # knockoff: soft CE on the scores (distill.distillation_loss; CE when only labels come back);
    # standard: CE on the answered label, whatever the victim returns
    kind = config["modeloutput"] if config["mode"] == "knockoff" else "labels"

    arch, width = config["archstolen"] or victim["arch"], config["widthstolen"] or victim["width"]
    config.update(archstolen=arch, widthstolen=width)
    qinfo = dataset_info(images.name)
    encoder = build_encoder(arch, stem=victim["stem"], width=width, mean=qinfo.mean, std=qinfo.std)
    head_kwargs = {"dims": [encoder.out_dim, info.num_classes]}
    stolen = EncoderWithHead(encoder, build_mlp(**head_kwargs)).to(device)
    batches, steps = image_batches(len(x_q), config["batch_size"])

    def step(idx: torch.Tensor, generator: torch.Generator):
        idx = idx.to(device)
        out = stolen(x_q[idx])
        loss = distillation_loss(out, answers[idx], kind)
        return loss, {}, len(idx)

    def save(state: dict) -> None:
        save_checkpoint(run_dir / "checkpoint.pt", encoder=stolen.encoder, head=stolen.head, head_kwargs=head_kwargs,
                        kind="stolen-classifier", dataset=task, config=config, queries_used=api.queries_used, **state)

    fit(step=step, batches=batches, steps_per_epoch=steps, modules=[stolen], optimizer=make_optimizer(config, stolen.parameters()), epochs=config["epochs"],
        base_lr=config["lr"], seed=config["seed"], precision=Precision(device), save=save,
        run_dir=run_dir, logger=logger, desc=config["mode"], tensorboard=False)
    stolen.eval()
    with torch.no_grad():
        stolen_pred = predict(stolen, x_eval)
    if served:  # measured through the service, after the attack (whose queries the server saw alone)
        measure = QueryClient(connection)
        victim_clf = ServedClassifier(measure)
        victim_pred = predict(victim_clf, x_eval)
        victim_acc = 100 * (victim_pred == y_eval).float().mean().item()
        logger.info(f"victim classifier (served at {config['victim_url']}, {task}): {victim_acc:.2f}% on "
                    f"{evaluation.split}")
    results = {
        "mode": config["mode"], "modeloutput": config["modeloutput"], "victimtype": config["victimtype"],
        "queries": api.queries_used,
        "victim_top1": victim_acc, "stolen_top1": 100 * (stolen_pred == y_eval).float().mean().item(),
        "fidelity": 100 * (stolen_pred == victim_pred).float().mean().item(),
        "fgsm_transfer": transfer_rates(stolen, victim_clf, x_eval, y_eval, config["fgsm_eps"], config["seed"]),
    }
    if served:
        results["evaluation_queries"] = measure.queries_used
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    print(f"\nvictim classifier {results['victim_top1']:.1f}% | stolen ({config['mode']}, {config['modeloutput']}, "
          f"{api.queries_used} queries) {results['stolen_top1']:.1f}% | fidelity {results['fidelity']:.1f}%")
    print("\n| FGSM eps | victim fooled % (transfer) | stolen fooled % (white-box) | victim fooled by noise % |")
    print("|---|---|---|---|")
    for r in results["fgsm_transfer"]:
        print(f"| {r['eps']:.4f} | {r['victim_fooled_%']:.1f} | {r['stolen_fooled_%']:.1f} "
              f"| {r['victim_fooled_by_noise_%']:.1f} |")
    print(f"results: {run_dir / 'results.json'}")
    return results
