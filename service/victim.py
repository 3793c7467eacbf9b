"""The service side: a victim model behind an API, answering accounts through a chain of defenses.

A :class:`VictimService` is what the owner of an encoder runs. It holds

* a **backend**: the model in this process. :class:`EncoderBackend` computes, for a batch of
  images, the representation ``h(x)`` and, when the victim has one, its projection head's
  output ``g(h(x))``; :class:`ClassifierBackend` computes a classifier's logits, probabilities,
  top-5 probabilities and labels;
* which of those outputs it **answers** (``representation``, ``head``, ``logits``,
  ``probabilities``, ``top5``, ``labels``): the others stay inside, e.g. for a detector that watches head outputs while
  the API answers representations;
* an ordered chain of **defenses** (``defenses.DEFENSES``): each may refuse a batch until a
  proof of work is shown (``admit``) and may change the answers (``apply``), and sees the
  account, the images, the answers, every output of the backend and its own per-account state;
* per-**account** state: queries used, requests, an optional budget, and each defense's
  state (answer history, puzzles, counters).

``answer(account, images, proof=None) -> answers`` is the one entry point. Every image is
one query of that account; a batch that would take the account past its budget is refused
whole, before anything is computed. ``info()`` is what the service publishes (output
dimension, input size and format, the training dataset and architecture as a model card);
its training recipe, weights and defenses stay private.

The attacker side never imports a backend: it holds a connection (:meth:`VictimService.connect`,
or an HTTP client later) with ``answer(images)``, ``out_dim`` and ``info``, and keeps its own
budget, cache and log in :class:`attacks.client.QueryClient`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data_aug import DATASETS, dataset_info, to_float
from defenses import build_defenses
from defenses.pow import ProofPayer
from engine.presets import DEFAULT_DATASET, scale_of, victim_run_dir
from models import load_encoder
from utils import ProofRequired, QueryBudgetExceeded, UserError, str2bool  # noqa: F401  (ProofRequired: re-exported)


class EncoderBackend:
    """A victim encoder (and optionally its projection head) in this process.

    ``outputs(images)`` returns ``{"representation": h(x)}``, plus ``"head": g(h(x))`` and
    ``"representation+head"`` (both, concatenated: one query, two outputs) when a head is
    given; ``out_dims`` names the size of each.
    """

    def __init__(self, encoder: nn.Module, head: Optional[nn.Module] = None, *,
                 device: torch.device | str = "cpu", batch_size: int = 512):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval().requires_grad_(False)
        self.head = None if head is None else head.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.out_dims = {"representation": int(encoder.out_dim)}
        if self.head is not None:
            self.out_dims["head"] = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1].out_features
            self.out_dims["representation+head"] = self.out_dims["representation"] + self.out_dims["head"]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        reps, heads = [], []
        for start in range(0, images.shape[0], self.batch_size):
            h = self.encoder(images[start:start + self.batch_size].to(self.device)).float()
            reps.append(h)
            if self.head is not None:
                heads.append(self.head(h).float())
        out = {"representation": torch.cat(reps)}
        if heads:
            out["head"] = torch.cat(heads)
            out["representation+head"] = torch.cat([out["representation"], out["head"]], dim=1)
        return out


class ClassifierBackend:
    """A classifier in this process, answering one of four outputs of its ``num_classes`` logits.

    What each answer gives the attacker per query, from least to most:

    * ``labels``: one-hot rows of the argmax; one class per query and no confidence, so the
      attacker can only train with cross-entropy on hard labels;
    * ``top5``: the softmax probabilities of the 5 most likely classes (all of them when there
      are 5 or fewer), every other class 0; partial scores: the ranking and confidence of the
      top classes, nothing about the rest;
    * ``probabilities``: the full softmax; every class's score (the logits up to a constant);
    * ``logits``: everything the classifier computes, including the scale the softmax hides.
    """

    TOPK = 5

    def __init__(self, classifier: nn.Module, num_classes: int, *, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval().requires_grad_(False)
        self.out_dims = {name: num_classes for name in ("logits", "labels", "probabilities", f"top{self.TOPK}")}

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(images.to(self.device)).float()
        probabilities = logits.softmax(1)
        k = min(self.TOPK, logits.shape[1])
        kept = probabilities.topk(k, dim=1).indices
        top = torch.zeros_like(probabilities).scatter_(1, kept, probabilities.gather(1, kept))
        return {"logits": logits, "labels": F.one_hot(logits.argmax(1), logits.shape[1]).float(),
                "probabilities": probabilities, f"top{self.TOPK}": top}


@dataclass
class Account:
    """What the service knows about one customer."""
    name: str
    budget: Optional[int] = None
    used: int = 0
    requests: int = 0
    state: dict = field(default_factory=dict)  # defense name -> that defense's state for this account


class VictimService:
    """Answers accounts' queries through a chain of defenses (see the module docstring)."""

    def __init__(self, backend, *, answers: str = "representation", defenses: Sequence = (),
                 info: Optional[dict] = None, outputs: Optional[Sequence[str]] = None):
        for name in [answers, *(outputs or ())]:
            if name not in backend.out_dims:
                raise UserError(f"this victim cannot answer {name!r}: it has {', '.join(backend.out_dims)} "
                                f"(a victim without a projection head cannot answer head outputs)")
        self.backend, self.answers, self.defenses = backend, answers, list(defenses)
        self.outputs = list(dict.fromkeys([answers, *(outputs or ())]))  # the default first
        self.accounts: dict[str, Account] = {}
        self._info = {**(info or {}), "answers": answers, "out_dim": backend.out_dims[answers],
                      "outputs": {name: backend.out_dims[name] for name in self.outputs}}
        if "+" in answers:
            self._info["parts"] = {part: backend.out_dims[part] for part in answers.split("+")}
        for defense in self.defenses:
            defense.prepare(self)

    @property
    def out_dim(self) -> int:
        return self._info["out_dim"]

    def info(self) -> dict:
        """What the service publishes to its customers."""
        return dict(self._info)

    def account(self, name: str, budget: Optional[int] = None) -> Account:
        """The account ``name``, opened on first use (with ``budget`` queries, ``None`` = unlimited)."""
        if name not in self.accounts:
            if budget is not None and budget < 0:
                raise UserError(f"an account budget must be non-negative, got {budget}")
            self.accounts[name] = Account(name, budget)
        return self.accounts[name]

    def usage(self, name: str) -> dict:
        acc = self.account(name)
        return {"account": name, "used": acc.used, "requests": acc.requests, "budget": acc.budget,
                "remaining": None if acc.budget is None else acc.budget - acc.used}

    def answer(self, account: str, images: torch.Tensor, proof: Optional[dict] = None,
               output: Optional[str] = None) -> torch.Tensor:
        """Answers for a batch (uint8, or float in [0, 1], ``B x 3 x S x S``); every image is one query.
        ``output``: one of the offered outputs (default :attr:`answers`)."""
        self.output_name(output)  # an output not offered is refused before anything is counted
        x = self.admit(account, images, proof)
        return self.finish(account, x, self.backend.outputs(x), output)

    def admit(self, account: str, images: torch.Tensor, proof: Optional[dict] = None) -> torch.Tensor:
        """The first half of :meth:`answer`: the budget check and each defense's ``admit``; returns the
        float batch for the backend. A server that gathers several requests into one forward pass
        (``serving.Batcher``) calls this, the backend, then :meth:`finish` for each request."""
        acc = self.account(account)
        n = images.shape[0]
        if acc.budget is not None and acc.used + n > acc.budget:
            raise QueryBudgetExceeded(f"account {account!r}: answering {n} queries would exceed its budget of "
                                      f"{acc.budget} ({acc.used} used)")
        x = to_float(images)
        for defense in self.defenses:
            defense.admit(account, x, acc.state.setdefault(defense.name, {}), proof)
        return x

    def output_name(self, output: Optional[str]) -> str:
        """The output a request asks for (``None``: the default, :attr:`answers`), checked against
        those the service offers (``outputs=``)."""
        if output is None:
            return self.answers
        if output not in self.outputs:
            raise UserError(f"this service does not answer {output!r}; it offers {', '.join(self.outputs)}")
        return output

    def finish(self, account: str, x: torch.Tensor, outputs: dict, output: Optional[str] = None) -> torch.Tensor:
        """The second half of :meth:`answer`: the answers (``output``, default :attr:`answers`) from the
        backend's ``outputs`` on ``x``, through each defense's ``apply``, and the account's counters."""
        acc = self.account(account)
        answers = outputs[self.output_name(output)]
        for defense in self.defenses:
            answers = defense.apply(account, x, answers, acc.state[defense.name], outputs=outputs)
        acc.used += x.shape[0]
        acc.requests += 1
        return answers

    def connect(self, account: str = "user", budget: Optional[int] = None) -> "Connection":
        """An in-process connection for ``account``: what an attack or a legitimate user holds."""
        self.account(account, budget)
        return Connection(self, account)


class Connection(ProofPayer):
    """A customer's handle on an in-process service: ``answer(images)``, ``out_dim``, ``info``.

    It is the transport, the part an HTTP client replaces: it sends a batch, and when the
    service asks for a proof of work it solves the puzzle (counting the hashes and the
    seconds spent, the customer's cost) and sends the batch again with the proof.
    """

    def __init__(self, service: VictimService, account: str):
        super().__init__()
        self.service, self.account = service, account
        self.info = service.info()
        self.out_dim = self.info["out_dim"]

    def answer(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return self.service.answer(self.account, images)
        except ProofRequired as request:
            nonce = self.pay(request.puzzle)
            return self.service.answer(self.account, images,
                                       proof={"challenge": request.puzzle.challenge, "nonce": nonce})


# --------------------------------------------------------------------------------------
# building a service from a victim checkpoint (the owner's side: it may read the checkpoint)


VICTIM_TYPES = {"simclr": ("victim", "run.py"), "supervised": ("supervised", "simclrsup.py")}
"""``--victimtype`` -> (run-directory kind, the script that trains such a victim)."""


def default_victim_checkpoint(dataset: Optional[str], seed: int, arch: Optional[str] = None,
                              width: Optional[int] = None, victimtype: str = "simclr",
                              watermarked: bool = False) -> Path:
    """The default checkpoint for this dataset/arch/width/seed: run.py's run directory (its
    ``--watermark True`` one with ``watermarked``), or simclrsup.py's for ``victimtype="supervised"``."""
    kind = "victimwm" if watermarked and victimtype == "simclr" else VICTIM_TYPES[victimtype][0]
    return victim_run_dir(dataset or DEFAULT_DATASET, seed, arch, width, kind=kind) / "checkpoint.pt"


def check_victim_type(victim: "LoadedVictim", victimtype: str) -> None:
    """One clear error when a checkpoint is not of the ``--victimtype`` asked for: a supervised
    victim (simclrsup.py, ``kind: supervised``) with ``simclr``, or any other with ``supervised``."""
    kind = victim.checkpoint.get("kind")
    if (kind == "supervised") != (victimtype == "supervised"):
        other = "supervised" if kind == "supervised" else "simclr"
        raise UserError(f"--victimtype {victimtype} does not match the victim checkpoint {victim.path}, which "
                        f"holds a {kind or 'unlabelled'} model; pass --victimtype {other} or a "
                        f"{victimtype} victim's checkpoint (trained by {VICTIM_TYPES[victimtype][1]})")


@dataclass
class LoadedVictim:
    """A victim checkpoint, checked against the flags that describe it."""
    encoder: nn.Module
    head: Optional[nn.Module]
    checkpoint: dict
    path: Path
    dataset: str
    image_size: int

    def model_card(self) -> dict:
        """What the service publishes about this victim (never its training recipe)."""
        return {"dataset": self.dataset, "input_size": self.image_size,
                "input": "RGB float in [0, 1], B x 3 x S x S (the model normalises inside)",
                "arch": self.encoder.arch, "width": self.encoder.width, "stem": self.encoder.stem,
                "has_head": self.head is not None}


def load_victim(path: Optional[str] = None, *, dataset: Optional[str] = None, seed: int = 0,
                arch: Optional[str] = None, width: Optional[int] = None, stem: Optional[str] = None,
                lossvictim: Optional[str] = None,
                epochstrain: Optional[int] = None, victimtype: str = "simclr",
                watermarked: bool = False) -> LoadedVictim:
    """Load a victim checkpoint (default: run.py's default run for ``dataset``/``seed``, or
    simclrsup.py's for ``victimtype="supervised"``) and check it against the flags that describe
    it (``--arch --width --lossvictim --epochstrain --dataset``); ``watermarked``: the default path
    is run.py --watermark True's."""
    if path is None:
        path = default_victim_checkpoint(dataset, seed, arch, width, victimtype, watermarked)
        if not Path(path).is_file():
            what = "supervised victim" if victimtype == "supervised" else (
                "watermarked victim" if watermarked else "victim")
            extra = " --watermark True" if watermarked and victimtype == "simclr" else ""
            raise UserError(f"no {what} checkpoint at {path}; train one with `python {VICTIM_TYPES[victimtype][1]} "
                            f"--dataset {dataset or DEFAULT_DATASET}{extra}` or pass --victim-checkpoint PATH")
    path = Path(path)
    with torch.random.fork_rng(devices=[]):  # rebuilding the modules must not move the caller's random state
        encoder, head, ckpt = load_encoder(path, arch=arch, width=width, stem=stem, with_head=True)
    vconfig = ckpt.get("config") or {}
    for flag, value, key in (("lossvictim", lossvictim, "losstype"), ("epochstrain", epochstrain, "epochs")):
        if value is not None and key in vconfig and vconfig[key] != value:
            raise UserError(f"--{flag} {value} does not match the victim checkpoint {path}, which was "
                            f"trained with {key} {vconfig[key]}; drop --{flag} or pass the right checkpoint")
    trained_on = vconfig.get("dataset") or ckpt.get("dataset")
    if dataset and trained_on and dataset != trained_on:
        raise UserError(f"--dataset {dataset} does not match the victim checkpoint {path}, which was "
                        f"trained on {trained_on}; drop --dataset or pass the right checkpoint")
    dataset = dataset or trained_on
    if dataset is None:
        raise UserError(f"the victim checkpoint {path} does not name its dataset; pass --dataset")
    if dataset not in DATASETS:
        raise UserError(f"the victim checkpoint {path} names an unknown dataset {dataset!r}; pass --dataset")
    image_size = int(vconfig.get("image_size") or dataset_info(dataset).native_size)
    return LoadedVictim(encoder, head, ckpt, path, dataset, image_size)


def build_service(victim: LoadedVictim, *, answers: str = "representation", defenses: Sequence = (),
                  device: torch.device | str = "cpu", outputs: Optional[Sequence[str]] = None) -> VictimService:
    """A service answering ``answers`` of a loaded victim through ``defenses`` (and, on request,
    any of ``outputs``).

    The head is loaded whenever the checkpoint has one, so that a detector can watch head
    outputs while the API answers representations; it is answered only with ``answers="head"``
    or when ``outputs`` offers it.
    """
    backend = EncoderBackend(victim.encoder, victim.head, device=device)
    return VictimService(backend, answers=answers, defenses=defenses, info=victim.model_card(), outputs=outputs)


def add_victim_args(parser, *, head_flag: bool = True):
    """The flags that name and describe the victim (the owner's side of an experiment)."""
    g = parser.add_argument_group("victim (the service side: the attack never reads its checkpoint)")
    g.add_argument("--victim-checkpoint", default=None,
                   help="the victim's checkpoint (default: run.py's default run directory for --dataset, "
                        "--arch, --width and --seed, e.g. runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt)")
    g.add_argument("-dataset", "--dataset", dest="dataset", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the victim's training dataset (default: read from its checkpoint; mnistm5k when "
                        "the checkpoint is found by its default path)")
    g.add_argument("--archvic", dest="arch", default=None,
                   help="the victim's architecture; checked against the checkpoint (default: the checkpoint's)")
    g.add_argument("--width", "--widthvic", dest="width", type=int, default=None,
                   help="the victim's base width; checked against the checkpoint (default: the checkpoint's)")
    g.add_argument("--stem", default=None, choices=["cifar", "imagenet"],
                   help="the victim's stem (cifar = 3x3 conv, imagenet = 7x7 conv and max-pool); checked against the "
                        "checkpoint (default: read from its weights)")
    g.add_argument("--lossvictim", default=None,
                   help="the loss the victim was trained with; checked against the checkpoint")
    g.add_argument("--epochstrain", type=int, default=None,
                   help="the victim's training epochs; checked against the checkpoint")
    if head_flag:
        g.add_argument("--victimhead", type=str2bool, default=False,
                       help="access head: the victim answers its projection head output g(h) instead of h")
    return g


def service_from_config(config: dict, *, answers: str, scale_flag: Optional[str] = None,
                        device: torch.device | str = "cpu") -> tuple[VictimService, dict]:
    """The owner's side of an experiment: load the victim named by the flags, build its
    defenses from their flags, and return ``(service, what to record in config.yaml)``."""
    victim = load_victim(config.get("victim_checkpoint"), dataset=config.get("dataset"), seed=config["seed"],
                         arch=config.get("arch"), width=config.get("width"), stem=config.get("stem"),
                         lossvictim=config.get("lossvictim"),
                         epochstrain=config.get("epochstrain"), watermarked=bool(config.get("watermark")))
    scale = scale_of(victim.dataset, scale_flag)
    defenses = build_defenses(config, scale)
    service = build_service(victim, answers=answers, defenses=defenses, device=device)
    record = {"victim_checkpoint": str(victim.path), "dataset": victim.dataset, "scale": scale,
              "arch": victim.encoder.arch, "width": victim.encoder.width, "image_size": victim.image_size,
              "victim_watermarked": bool(victim.checkpoint.get("watermark")),
              "defenses": [d.describe() for d in defenses]}
    return service, record
