"""Classic extraction of a downstream classifier, and FGSM transferability (Appendix A.2).

The library behind ``knockoff.py``, ``steallabels.py`` and ``extract.py`` (their docstrings
say what the experiment is): the owner builds a victim *classifier* behind a
:class:`service.victim.VictimService` answering labels or logits; the attacker trains its own
classifier on the answers through a :class:`attacks.client.QueryClient`; then accuracy, fidelity and
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

from attacks.client import QueryClient, check_budget
from attacks.connect import VICTIM_TYPES, OpenVictim, VictimScores, add_http_victim_args, open_victim
from attacks.distill import distillation_loss
from attacks.encoder import image_batches, query_pool, query_set
from data_aug import DATASETS, dataset_info, get_dataset, split_holdout, to_float
from engine.optim import make_optimizer
from engine.presets import run_dir as run_dir_named
from models import ARCHS, EncoderWithHead, build_encoder, build_mlp, encoder_out_dim, save_checkpoint
from simclr import Precision, fit
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    add_reference_args,
    atomic_write_text,
    get_logger,
    prepare_run_dir,
    setup_run,
    str2bool,
    write_config,
)

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
                        "the 5 largest probabilities (the rest 0); see service.victim.ClassifierBackend for what each "
                        "costs the attacker")
    p.add_argument("--mode", default=mode, choices=["standard", "knockoff"],
                   help="standard: CE on labels with Adam (SGD against a supervised victim, as the reference); "
                        "knockoff: soft CE on probabilities with SGD")
    p.add_argument("-a", "--arch", dest="archstolen", default=None, choices=ARCHS,
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


def resolve(config: dict) -> dict:
    """The flags with the by-mode (and by-victim-type) training defaults filled in."""
    config = dict(config, arch=None, width=None, n_views=1, force=False)
    config.setdefault("victimtype", "simclr")
    config.setdefault("momentum", 0.9)
    defaults = {**MODE_DEFAULTS[config["mode"]],
                **VICTIMTYPE_DEFAULTS.get(config["victimtype"], {}).get(config["mode"], {})}
    for key, value in defaults.items():
        if config.get(key) is None:
            config[key] = value
    return config


def open_classifier(config: dict, device: torch.device) -> OpenVictim:
    """The victim classifier the flags name, answering ``--modeloutput``: in this process (the
    owner's classifier for ``--dataset-test``), or served at ``--victim-url``, whose card must be a
    classifier's and whose task must be ``--dataset-test`` when that is given."""
    victim = open_victim(config, output=config["modeloutput"], kind="classifier", device=device,
                         owner_flags={"victim_checkpoint": "--victim-checkpoint"})
    card = victim.card
    if "task" not in card:
        raise UserError(f"the service at {victim.url} answers an encoder, not a classifier; serve "
                        f"one with `serve.py --victimtype supervised` or `serve.py --outputs probabilities ...`")
    if config["dataset_test"] not in (None, card["task"]):
        raise UserError(f"--dataset-test {config['dataset_test']} differs from the task of the classifier served "
                        f"at {victim.url} ({card['task']}); drop --dataset-test")
    return victim


def evaluation_queries(n_eval: int, n_eps: int) -> int:
    """At most how many answers measuring a served victim takes: its predictions on the evaluation
    images, and on an adversarial and a noisy copy of each at every FGSM step size."""
    return n_eval * (1 + 2 * n_eps)


def prepare_run(config: dict):
    """The run directory (named by mode, output and queries unless --logdir), config.yaml and the log."""
    if config["logdir"] is None:
        parts = [config["mode"], config["modeloutput"], config["num_queries"]]
        parts += ["supervised"] if config["victimtype"] == "supervised" else []
        config["logdir"] = str(run_dir_named(*parts, seed=config["seed"]))
    run_dir = prepare_run_dir(config["logdir"])
    if (run_dir / "results.json").exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds results; pass --clear or another --logdir")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_config(run_dir, config)
    return run_dir, get_logger(run_dir)


def train_stolen(config: dict, x_q: torch.Tensor, answers: torch.Tensor, kind: str, stolen: EncoderWithHead,
                 head_kwargs: dict, api: QueryClient, run_dir, logger, device) -> None:
    """The attacker's classifier trained on the answers (``distill.distillation_loss`` of ``kind``)
    in the one training loop, checkpointed in ``run_dir``."""
    batches, steps = image_batches(len(x_q), config["batch_size"])

    def step(idx: torch.Tensor, generator: torch.Generator):
        idx = idx.to(device)
        out = stolen(x_q[idx])
        loss = distillation_loss(out, answers[idx], kind)
        return loss, {}, len(idx)

    def save(state: dict) -> None:
        save_checkpoint(run_dir / "checkpoint.pt", encoder=stolen.encoder, head=stolen.head, head_kwargs=head_kwargs,
                        kind="stolen-classifier", dataset=config["dataset_test"], config=config,
                        queries_used=api.queries_used, **state)

    fit(step=step, batches=batches, steps_per_epoch=steps, modules=[stolen],
        optimizer=make_optimizer(config, stolen.parameters()), epochs=config["epochs"], base_lr=config["lr"],
        seed=config["seed"], precision=Precision(device), save=save, run_dir=run_dir, logger=logger,
        desc=config["mode"], tensorboard=False)


def print_results(results: dict, config: dict, run_dir) -> None:
    print(f"\nvictim classifier {results['victim_top1']:.1f}% | stolen ({config['mode']}, {config['modeloutput']}, "
          f"{results['queries']} queries) {results['stolen_top1']:.1f}% | fidelity {results['fidelity']:.1f}%")
    print("\n| FGSM eps | victim fooled % (transfer) | stolen fooled % (white-box) | victim fooled by noise % |")
    print("|---|---|---|---|")
    for r in results["fgsm_transfer"]:
        print(f"| {r['eps']:.4f} | {r['victim_fooled_%']:.1f} | {r['stolen_fooled_%']:.1f} "
              f"| {r['victim_fooled_by_noise_%']:.1f} |")
    print(f"results: {run_dir / 'results.json'}")


def run(config: dict, victim: OpenVictim, device: torch.device) -> dict:
    """The whole experiment on an open victim classifier (:func:`open_classifier`), from resolved
    flags (:func:`resolve`): the attack through a budgeted :class:`attacks.client.QueryClient`, then the
    stolen classifier's accuracy, its fidelity to the victim and FGSM transfer. The victim's side
    of the measurements is the owner's own classifier in this process, and is bought through the
    service (after the attack, whose queries the server saw alone) when it is served elsewhere."""
    card = victim.card
    config.update(victim.record, dataset_test=card["task"])
    task, size = card["task"], config["image_size"]
    info = dataset_info(task)
    if not info.num_classes:
        raise UserError(f"{task} has no labels; pick a labelled --dataset-test")
    # the attacker's encoder, checked before the first query (and before the run directory)
    encoder_out_dim(config["archstolen"] or card["arch"], config["widthstolen"] or card["width"],
                    what="-a/--arch" if config["archstolen"] else "the victim's published architecture")
    query_part, evaluation = split_holdout(get_dataset(task, info.test_split, root=config["data"], image_size=size),
                                           config["holdout"])
    # queries: the downstream test split without its holdout, unless --datasetsteal names another set
    pool, _ = query_pool(task, size, datasetsteal=config["datasetsteal"], holdout=len(evaluation), data=config["data"])
    images = query_set(pool, config["num_queries"], 1)
    scores = VictimScores(victim)
    n_measure = evaluation_queries(len(evaluation), len(config["fgsm_eps"])) if scores.bought else 0
    check_budget(victim.connection, len(images) + n_measure,
                 f"{len(images)} for the attack, --num_queries, and up to {n_measure} to measure the victim on its "
                 f"evaluation images and their FGSM and noise copies",
                 "lower --num_queries, --holdout or --fgsm-eps, or use an account with a larger budget")
    run_dir, logger = prepare_run(config)
    x_eval, y_eval = to_float(evaluation.images).to(device), evaluation.labels.to(device)
    api = QueryClient(victim.connection, budget=config["num_queries"], log_path=run_dir / "queries.jsonl")
    x_q = to_float(images.images).to(device)
    answers = api.query(x_q, keys=list(range(len(x_q))))  # the attacker buys every answer once
    api.end_epoch(0)
    # knockoff: soft CE on the scores (distill.distillation_loss; CE when only labels come back);
    # standard: CE on the answered label, whatever the victim returns
    kind = config["modeloutput"] if config["mode"] == "knockoff" else "labels"
    arch, width = config["archstolen"] or card["arch"], config["widthstolen"] or card["width"]
    config.update(archstolen=arch, widthstolen=width)
    qinfo = dataset_info(images.name)
    encoder = build_encoder(arch, stem=card["stem"], width=width, mean=qinfo.mean, std=qinfo.std)
    head_kwargs = {"dims": [encoder.out_dim, info.num_classes]}
    stolen = EncoderWithHead(encoder, build_mlp(**head_kwargs)).to(device)
    train_stolen(config, x_q, answers, kind, stolen, head_kwargs, api, run_dir, logger, device)
    stolen.eval()
    with torch.no_grad():
        stolen_pred = predict(stolen, x_eval)
    victim_pred = predict(scores, x_eval)
    victim_acc = 100 * (victim_pred == y_eval).float().mean().item()
    logger.info(f"victim classifier ({victim.description}, {task}): {victim_acc:.2f}% on {evaluation.split}")
    results = {
        "mode": config["mode"], "modeloutput": config["modeloutput"], "victimtype": config["victimtype"],
        "queries": api.queries_used,
        "victim_top1": victim_acc, "stolen_top1": 100 * (stolen_pred == y_eval).float().mean().item(),
        "fidelity": 100 * (stolen_pred == victim_pred).float().mean().item(),
        "fgsm_transfer": transfer_rates(stolen, scores, x_eval, y_eval, config["fgsm_eps"], config["seed"]),
    }
    if scores.bought:
        results["evaluation_queries"] = scores.queries_used
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    print_results(results, config, run_dir)
    return results


def main(config: dict) -> dict:
    """knockoff.py, steallabels.py and extract.py: parsed flags -> the experiment's results."""
    config = resolve(config)
    device = setup_run(config)
    return run(config, open_classifier(config, device), device)
