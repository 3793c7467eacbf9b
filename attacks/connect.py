"""The one place an attack opens its victim: served over HTTP by ``serve.py`` (``--victim-url`` and an
API key: ``--api-key``, ``--api-key-file`` or ``SSLSTEAL_API_KEY``), or run by its owner in this process
from a checkpoint.

Either way :func:`open_victim` returns an :class:`OpenVictim`: one connection per account, all
with the same calls (``answer(images)``, ``out_dim``, ``info``, ``remaining()``), the victim's
published card and what the run records about it. No attack branches on where its victim is.

This module is the attacker side's only door to the owner's side (an import-linter contract in
``pyproject.toml``): it builds the in-process victims (:data:`LOCAL_VICTIMS`: an encoder, a
classifier, a published SimSiam checkpoint) and hands the attack nothing but connections. The
owner's own classifier is kept for the *experiment's* measurements of the victim
(:class:`VictimScores`), never for the attack.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from attacks.client import HTTPConnection, QueryClient, SybilConnection, wire_images
from engine.presets import scale_of
from service.classifier import classifier_service
from service.victim import (
    VICTIM_TYPES,  # noqa: F401  (re-exported: the victim types of --victimtype)
    build_service,
    check_victim_type,
    load_victim,
    service_from_config,
)
from service.wire import image_hashes
from utils import UserError, redact_key

# the environment variable holding API keys (several separated by commas or whitespace), so that no
# key has to be typed on a command line, where `ps` shows it to every user of the machine
API_KEY_ENV = "SSLSTEAL_API_KEY"
KEY_SOURCES = (f"pass --api-key KEY, --api-key-file PATH (one key per line) or set {API_KEY_ENV} "
               f"(keys separated by commas or spaces)")


def add_http_victim_args(parser):
    """``--victim-url`` and the account's API key(s) (``--api-key``, ``--api-key-file`` or the environment
    variable ``SSLSTEAL_API_KEY``): attack (or use) a victim served by ``serve.py``."""
    g = parser.add_argument_group("a victim served over HTTP (serve.py)")
    g.add_argument("--victim-url", default=None,
                   help="query the victim behind this URL (e.g. http://127.0.0.1:8000) instead of loading a "
                        "checkpoint; the dataset, input size and architecture come from its /v1/info, and the "
                        "query budget is at most what the account(s) have left in /v1/usage")
    g.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help="the account's API key for --victim-url; repeat it to spread the queries over several "
                        "accounts (a Sybil attack; steal.py routes them by --sybil-split). A key typed here is "
                        "visible to other users in `ps`: prefer --api-key-file or " + API_KEY_ENV)
    g.add_argument("--api-key-file", action="append", default=None, metavar="PATH",
                   help="read the API key(s) from this file instead: one key per line (several lines: several "
                        "accounts), blank lines and lines starting with # ignored; repeatable. Used when no "
                        "--api-key is given; without either, the keys come from the environment variable "
                        f"{API_KEY_ENV} (several separated by commas or spaces). Only the file's path and each "
                        "key's last 4 characters are recorded")
    return g


def _keys_in_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise UserError(f"--api-key-file {path} cannot be read ({reason}); pass a text file with one API key per "
                        f"line") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise UserError(f"--api-key-file {path} holds no key (only blank or # comment lines); write one API key per "
                        f"line (create one with `python serve.py accounts create NAME`)")
    bad = [n for n, key in enumerate(keys, 1) if re.search(r"\s", key)]
    if bad:
        raise UserError(f"--api-key-file {path}: key number {bad[0]} contains a space; write one key per line")
    return keys


def api_keys(config: dict, environ: Optional[dict] = None) -> list[str]:
    """The API keys of a served victim's account(s), from the first source that gives any: ``--api-key``
    (repeated), then ``--api-key-file`` (each file's keys, in order), then the environment variable
    ``SSLSTEAL_API_KEY`` (split at commas and whitespace). None at all, an unreadable file or one without
    a key is one :class:`utils.UserError`."""
    if config.get("api_key"):
        return list(config["api_key"])
    if config.get("api_key_file"):
        return [key for path in config["api_key_file"] for key in _keys_in_file(path)]
    environ = os.environ if environ is None else environ
    keys = [key for key in re.split(r"[\s,]+", environ.get(API_KEY_ENV, "")) if key]
    if keys:
        return keys
    raise UserError(f"--victim-url needs --api-key KEY, --api-key-file PATH (one key per line) or the environment "
                    f"variable {API_KEY_ENV} (keys separated by commas or spaces); create a key with "
                    f"`python serve.py accounts create NAME`")


# flags that name or build the victim on the owner's side, meaningless for a victim served elsewhere
OWNER_FLAGS = {"victim_checkpoint": "--victim-checkpoint", "defenses": "--defenses", "defence": "--defence",
               "lossvictim": "--lossvictim", "epochstrain": "--epochstrain"}


# flags that describe the victim: over HTTP they are checked against the service's card
CARD_FLAGS = {"dataset": ("--dataset", "dataset"), "arch": ("--archvic", "arch"), "width": ("--width", "width"),
              "stem": ("--stem", "stem")}


def open_http_victim(config: dict, *, output: Optional[str] = None, owner_flags: dict = OWNER_FLAGS,
                     card_flags: dict = CARD_FLAGS) -> tuple:
    """``--victim-url`` and its key(s) (:func:`api_keys`): a connection to a victim served over HTTP
    (through several accounts when there are several keys), answering ``output`` (default: the service's
    default answer), and what to record in config.yaml about it (its published card; the keys redacted).

    One :class:`utils.UserError` when a key is missing, when an owner-side flag (``owner_flags``:
    config key -> flag) is set, when a flag that describes the victim disagrees with the card,
    or when the account may not ask for ``output`` (head outputs need head access).
    """
    keys = api_keys(config)
    given = [flag for key, flag in owner_flags.items() if config.get(key)]
    if given:
        raise UserError(f"--victim-url queries a served victim, so the owner's flags {', '.join(given)} do not "
                        f"apply (the victim and its defenses are serve.py's); drop them")
    accounts = [HTTPConnection(config["victim_url"], key, output=output) for key in keys]
    connection = accounts[0] if len(accounts) == 1 else SybilConnection(accounts)
    card = connection.info
    for key, (flag, name) in card_flags.items():
        if config.get(key) is not None and card.get(name) is not None and config[key] != card[name]:
            raise UserError(f"{flag} {config[key]} does not match the victim served at {config['victim_url']}, "
                            f"whose card says {name} {card[name]}; drop {flag}")
    record = {"victim_checkpoint": config["victim_url"], "dataset": card["dataset"],
              "scale": scale_of(card["dataset"], config.get("scale")), "arch": card["arch"], "width": card["width"],
              "stem": card.get("stem", "cifar"), "image_size": card["input_size"], "victim_watermarked": False,
              "defenses": ["served: unknown"], "victim_output": card["answers"],
              "api_key": [redact_key(key) for key in keys]}  # never the keys themselves
    return connection, record


# ----------------------------------------------------------------------------- in-process victims


@dataclass
class LocalVictim:
    """What the owner hands over when it runs the victim in this process."""
    service: Any                    # the VictimService
    record: dict                    # what the run records about the victim in config.yaml
    model: Optional[nn.Module] = None  # the owner's classifier, for the experiment's measurements only
    description: str = ""           # for the log


def local_encoder(config: dict, output: str, device) -> LocalVictim:
    """An encoder victim from ``--victim-checkpoint`` and the victim's flags, behind the defenses
    its flags name (:func:`service.victim.service_from_config`)."""
    service, record = service_from_config(config, answers=output, scale_flag=config.get("scale"), device=device)
    return LocalVictim(service, record, description=f"{record['victim_checkpoint']} (in this process)")


def local_classifier(config: dict, output: str, device) -> LocalVictim:
    """A classifier victim (``--victimtype``: a SimCLR encoder with a linear probe fitted on the
    ``--dataset-test`` task, or a supervised victim's own classifier) answering ``output``."""
    loaded = load_victim(config["victim_checkpoint"], dataset=config.get("dataset"), seed=config["seed"],
                         victimtype=config["victimtype"])
    check_victim_type(loaded, config["victimtype"])
    task = config.get("dataset_test") or loaded.dataset
    if config["victimtype"] == "supervised" and task != loaded.dataset:
        raise UserError(f"a supervised victim's classifier answers its own task ({loaded.dataset}), not "
                        f"--dataset-test {task}; drop --dataset-test or use --victimtype simclr")
    service, model, described = classifier_service(loaded, config["victimtype"], task, answers=output,
                                                   data=config.get("data"), seed=config["seed"], device=device)
    record = {"victim_checkpoint": str(loaded.path), "victimtype": config["victimtype"], "dataset": loaded.dataset,
              "image_size": loaded.image_size, "dataset_test": task}
    return LocalVictim(service, record, model=model, description=f"{described} on {task}")


def local_pretrained(config: dict, output: str, device) -> LocalVictim:
    """A published encoder checkpoint (``--pretrained``, e.g. SimSiam's ResNet50) answering ``output``."""
    if not config.get("pretrained"):
        raise UserError("name the victim with --pretrained PATH (e.g. the published SimSiam "
                        "checkpoint_0099-batch256.pth.tar; the reference used a hard-coded path) or with "
                        "--victim-url URL and an API key (a victim served by serve.py; " + KEY_SOURCES + ")")
    loaded = load_victim(config["pretrained"], seed=config["seed"])
    service = build_service(loaded, answers=output, device=device)
    return LocalVictim(service, {"victim_checkpoint": str(loaded.path)}, description=str(loaded.path))


# --victim kinds an attack can open in this process
LOCAL_VICTIMS: dict[str, Callable[[dict, str, Any], LocalVictim]] = {
    "encoder": local_encoder, "classifier": local_classifier, "pretrained": local_pretrained}


# ----------------------------------------------------------------------------- the one opener

# what a run records of a served victim's card (config.yaml: victim_card)
CARD_KEYS = ("dataset", "task", "classes", "arch", "width", "stem", "input_size", "out_dim", "answers")


@dataclass
class OpenVictim:
    """An open victim, as the attacker sees it."""
    accounts: list                  # one connection per account (several: a Sybil attacker)
    record: dict                    # what the run records about the victim (API keys redacted)
    url: Optional[str] = None       # served over HTTP at this URL; None: in this process
    service: Any = None             # in this process: the owner's VictimService (its per-account books)
    model: Optional[nn.Module] = None  # in this process: the owner's classifier (measurements only)
    description: str = ""
    connection: Any = field(init=False)  # the accounts as one connection

    def __post_init__(self):
        self.connection = self.accounts[0] if len(self.accounts) == 1 else SybilConnection(self.accounts)

    @property
    def card(self) -> dict:
        """What the service publishes about the victim (``/v1/info``)."""
        return self.connection.info

    @property
    def served_entries(self) -> dict:
        """What a run records about a victim served elsewhere, beyond its address: the API keys
        (redacted), the published card and the defenses (the service's own, unknown here); nothing
        for a victim in this process, whose checkpoint and defenses the run's flags name."""
        if self.url is None:
            return {}
        card = self.card
        return {"api_key": self.record["api_key"], "defenses": self.record["defenses"],
                "victim_card": {key: card.get(key) for key in CARD_KEYS}}


def open_victim(config: dict, *, output: Optional[str], kind: str = "encoder", accounts: Sequence[str] = ("attacker",),
                owner_flags: dict = OWNER_FLAGS, card_flags: dict = CARD_FLAGS,
                device: torch.device | str = "cpu") -> OpenVictim:
    """Open the victim the flags name, answering ``output``: over HTTP with ``--victim-url`` (one
    account per API key; ``owner_flags`` are refused there and ``card_flags`` checked against
    the card, :func:`open_http_victim`; the keys from :func:`api_keys`), or in this process
    (``LOCAL_VICTIMS[kind]``, one connection per name in ``accounts``)."""
    if config.get("victim_url"):
        connection, record = open_http_victim(config, output=output, owner_flags=owner_flags, card_flags=card_flags)
        return OpenVictim(list(getattr(connection, "connections", [connection])), record, url=config["victim_url"],
                          description=f"served at {config['victim_url']}")
    local = LOCAL_VICTIMS[kind](config, output, device)
    return OpenVictim([local.service.connect(name) for name in accounts], local.record, service=local.service,
                      model=local.model, description=local.description)


# ----------------------------------------------------------------------------- measuring a victim


def image_keys(images: torch.Tensor) -> list[str]:
    """Each image's key as it travels to a served victim: the SHA-256 of its uint8 bytes, so that
    identical images are one query."""
    return image_hashes(wire_images(images))


class VictimScores:
    """The victim classifier's scores on a batch, for an experiment's *measurements* (its accuracy,
    the agreement with a copy, FGSM transfer), never for the attack.

    In this process they come from the owner's own classifier, free, as the owner would measure
    it. Over HTTP they are bought through the service (the output the connection asks for; its
    argmax is the predicted class whichever it is), through a :class:`attacks.client.QueryClient`
    keyed by each image's bytes as sent, so an image asked twice is paid once. The client is
    opened on first use, so that the measurement starts from what the account has left then.
    """

    def __init__(self, victim: OpenVictim):
        self.victim, self._client = victim, None

    @property
    def bought(self) -> bool:
        """Whether the scores are bought through the service (not the owner's own model)."""
        return self.victim.model is None

    @property
    def queries_used(self) -> int:
        return 0 if self._client is None else self._client.queries_used

    def cost(self, images: torch.Tensor) -> int:
        """At most how many queries scoring ``images`` takes (its distinct images, when bought)."""
        return len(set(image_keys(images))) if self.bought else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bought:
            with torch.no_grad():
                return self.victim.model(x)
        if self._client is None:
            self._client = QueryClient(self.victim.connection)
        return self._client.query(x, keys=image_keys(x.detach()))
