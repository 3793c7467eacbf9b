"""The owner's classifier victims: a victim encoder turned into a classifier for a downstream
task, behind a :class:`service.victim.VictimService` that answers its logits, probabilities,
top-5 probabilities or labels (:class:`service.victim.ClassifierBackend`).

One builder for ``serve.py --victimtype/--outputs`` and for the in-process victims of the
classifier-extraction experiments (``knockoff.py``, ``steallabels.py``, ``extract.py``,
``sslextract.py``, opened by :func:`attacks.connect.open_victim`), so both answer the same
classifier.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from data_aug import dataset_info, get_dataset
from models import EncoderWithHead
from models.probe import extract_features, train_probe
from service.victim import ClassifierBackend, LoadedVictim, VictimService, check_victim_type
from utils import UserError


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


def classifier_service(victim: LoadedVictim, victimtype: str, task: str, *, answers: str,
                       outputs: Optional[Sequence[str]] = None, defenses: Sequence = (), card: Optional[dict] = None,
                       data=None, seed: int = 0,
                       device: torch.device | str = "cpu") -> tuple[VictimService, nn.Module, str]:
    """The owner's classifier for ``task`` behind a service answering ``answers`` (and, on request,
    any of ``outputs``) through ``defenses``; returns ``(service, classifier, description)``.

    The service publishes the victim's card plus ``card``, the ``task`` and its number of
    ``classes``, as ``serve.py`` does."""
    clf, described, classes = fit_victim_classifier(victim, victimtype, task, data=data, seed=seed, device=device)
    info = {**victim.model_card(), **(card or {}), "task": task, "classes": classes}
    service = VictimService(ClassifierBackend(clf, classes, device=device), answers=answers, defenses=defenses,
                            info=info, outputs=outputs)
    return service, clf, described
