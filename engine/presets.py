"""Scale presets, the flags shared by every command (data, model) and the one place that names run directories.

Defaults that depend on the scale of a run: ``cpu`` is for the offline datasets (minutes on 2
cores); ``paper`` is the paper's setup (a GPU and the real data). ``--scale auto`` picks ``cpu``
for offline datasets and ``paper`` otherwise. A flag the user typed always wins; the resolved
values are written to config.yaml.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, Optional

from data_aug import DATASETS
from models import ARCHS, STEMS

# the default --dataset: the offline CPU benchmark (data_aug/offline.py)
DEFAULT_DATASET = "mnistm5k"

SCALE_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"arch": "resnet18", "width": 8},  # image size: the dataset's cpu_image_size (28 for mnistm5k)
    "paper": {"arch": "resnet34", "width": 64, "image_size": 32},
}
# the paper's ImageNet setup (SimSiam's ResNet50 at 224 px) replaces the paper scale's CIFAR defaults; at
# cpu scale imagenet is the CPU stand-in (an image folder of mnistm5k, docs/imagenet.md) and keeps the
# cpu defaults: ResNet18 width 8 at its cpu_image_size, 28 px
PAPER_IMAGENET = {"arch": "resnet50", "image_size": 224}


def scale_of(dataset: str, scale: Optional[str] = None) -> str:
    """The one place that decides the scale: ``scale`` when it is cpu or paper; for ``auto``
    (or ``None``) cpu for the offline datasets and paper otherwise."""
    if scale not in (None, "auto"):
        return scale
    return "cpu" if DATASETS[dataset].offline else "paper"


def preset_for(dataset: str, scale: Optional[str] = None) -> dict[str, Any]:
    """The shared by-scale defaults (arch, width, image_size) for a dataset."""
    scale = scale_of(dataset, scale)
    preset = dict(SCALE_PRESETS[scale])
    if scale == "cpu":
        preset["image_size"] = DATASETS[dataset].cpu_image_size
    elif dataset == "imagenet":
        preset.update(PAPER_IMAGENET)
    return preset


# ------------------------------------------------------------------ run directories
# The one place that names default run directories (every script and scripts/tables.py call these).


def run_dir(kind: str, *parts: Any, seed: int) -> Path:
    """A default ``--logdir``: ``runs/<kind>_<part>_..._s<seed>``."""
    return Path("runs") / "_".join([kind, *map(str, parts), f"s{seed}"])


def table_run_dir(scale: str, victim_dataset: str, seed: int, name: str) -> Path:
    """A run of scripts/tables.py: ``runs/tables_<scale>/<victim dataset>_s<seed>/<name>`` (shared by tables)."""
    return Path("runs") / f"tables_{scale}" / f"{victim_dataset}_s{seed}" / name


def victim_run_dir(dataset: str, seed: int, arch: Optional[str] = None, width: Optional[int] = None,
                   kind: str = "victim") -> Path:
    """run.py's default ``--logdir``: ``runs/victim_<dataset>_<arch>_w<width>_s<seed>``; a supervised
    victim (simclrsup.py) is ``kind="supervised"``: ``runs/supervised_<dataset>_...``."""
    preset = preset_for(dataset)
    return run_dir(kind, dataset, arch or preset["arch"], f"w{width or preset['width']}", seed=seed)


def pretrain_run_dir(method: str, pool: str, arch: str, width: int, seed: int) -> Path:
    """sslextract.py's pre-trained encoders: ``runs/pretrain_<method>_<pool>_<arch>_w<width>_s<seed>``."""
    return run_dir("pretrain", method, pool, arch, f"w{width}", seed=seed)


def steal_run_dir(losstype: str, num_queries: int, query_dataset: str, seed: int, kind: str = "steal") -> Path:
    """steal.py's (and stealhead.py's) default ``--logdir``: ``runs/<kind>_<loss>_<queries>_<query data>_s<seed>``."""
    return run_dir(kind, losstype, num_queries, query_dataset, seed=seed)


def stealsimsiam_run_dir(losstype: str, num_queries: int, datasetsteal: str, seed: int) -> Path:
    """stealsimsiam.py's default ``--logdir``, where linsimsiam.py finds a stolen copy:
    ``runs/stealsimsiam_<loss>_<queries>_<query set>_s<seed>``."""
    return steal_run_dir(losstype, num_queries, datasetsteal, seed, kind="stealsimsiam")


def add_data_args(parser: argparse.ArgumentParser, *, dataset_default: str = DEFAULT_DATASET) -> None:
    parser.add_argument("-data", "--data", dest="data", metavar="DIR", default=None,
                        help="root directory of the real datasets (see docs/benchmark.md, Data); "
                             "not needed for the offline datasets mnistm5k, mnist5k, digits, digitsm, patches")
    parser.add_argument("--dataset", default=dataset_default, choices=sorted(DATASETS), metavar="NAME",
                        help="training dataset: " + ", ".join(DATASETS))
    parser.add_argument("--image-size", type=int, default=None,
                        help="working resolution in px (every image is resized once); "
                             "cpu scale: 28 for mnist5k/mnistm5k, 16 for digits/digitsm, 28 for imagenet (its "
                             "CPU stand-in, an image folder of mnistm5k); paper scale 32 (224 for imagenet)")
    parser.add_argument("--download", action="store_true",
                        help="download a missing real dataset into -data DIR (needs internet)")
    parser.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                        help="preset for the defaults marked 'by scale': cpu (offline data, "
                             "narrow ResNet, minutes on a CPU) or paper (the paper's setup); "
                             "auto = cpu for offline datasets, paper otherwise")


def add_model_args(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    parser.add_argument("-a", "--arch", default=None, choices=ARCHS,
                        help="encoder architecture (by scale: cpu resnet18, paper resnet34 (resnet50 for "
                             "imagenet))")
    parser.add_argument("--width", type=int, default=None,
                        help="channels of the first ResNet stage; 64 is the standard ResNet, "
                             "8 trains in minutes on a CPU (by scale: cpu 8, paper 64)")
    parser.add_argument("--stem", default=None, choices=STEMS,
                        help="cifar: 3x3 conv, no max-pool (small images); imagenet: 7x7 conv and "
                             "max-pool (224 px). Default: imagenet from 128 px up, else cifar")


def resolve_scale(args: argparse.Namespace, script_presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return a config dict: the parsed flags, with each ``None`` filled from the scale preset.

    The namespace itself is not changed. ``script_presets`` adds a script's own
    scale-dependent defaults to the shared ones.
    """
    config = dict(vars(args))
    scale = scale_of(config["dataset"], config.get("scale"))
    preset = {**preset_for(config["dataset"], scale), **script_presets.get(scale, {})}
    for key, value in preset.items():
        if config.get(key) is None:
            config[key] = value
    if config.get("stem") is None:
        config["stem"] = "imagenet" if config["image_size"] >= 128 else "cifar"
    config["scale"] = scale
    return config


def defaults_epilog(presets: dict[str, dict[str, dict]], extra: Iterable[str] = ()) -> str:
    """The ``--help`` epilog of a ``{scale: {"*": base, loss: overrides}}`` table of defaults."""
    lines = ["defaults by scale and loss (a value you type always wins; config.yaml records the result):"]
    for scale, table in presets.items():
        lines.append(f"  {scale}: " + ", ".join(f"{k} {v}" for k, v in table["*"].items()))
        for loss, over in table.items():
            if loss != "*":
                lines.append(f"    {loss}: " + ", ".join(f"{k} {v}" for k, v in over.items()))
    return "\n".join([*lines, *extra])
