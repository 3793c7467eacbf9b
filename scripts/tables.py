"""Reproduce one of the paper's tables: train the victim, steal it, probe every encoder.

  python scripts/tables.py table2 --scale cpu            # offline mnistm5k, 3 seeds, on 2 cores
  python scripts/tables.py table2 --scale paper -data D  # the paper's setup (GPU and real data)
  python scripts/tables.py table7 --scale paper --dry-run  # print the commands only

Tables: table1 (attack methods), table2 (losses), table5 (losses, another victim dataset),
table7 (number of queries, out-of-distribution queries; Tables 6-7), table9 (number of
queries from the victim's own training data, SoftNN), table3 and table8 (the ImageNet path:
stealsimsiam.py and linsimsiam.py; at cpu scale on an ImageFolder of mnistm5k with the
mnistm5k victim re-exported in SimSiam's format), efficiency (number of queries from
the victim's own distribution for MSE, InfoNCE and SoftNN: the query-efficiency figure),
sslextract (the companion study: a supervised victim classifier extracted by distillation at
1%, 10% and 100% of the pool after none / rotation / MoCo / SimSiam pre-training; sslextract.py).
``--scale cpu`` keeps each table's structure on the offline benchmark: the mnistm5k victim
stands for CIFAR10 (mnist5k for SVHN in table5), ``patches`` for the out-of-distribution
SVHN queries, and the downstream columns are mnistm5k and mnist5k instead of CIFAR10 /
STL10 / SVHN. Every table has the rows victim, random (the same architecture at random
initialisation) and pixels (raw pixels), each probed once per seed.

Resuming: a probe is skipped when the results file has a record with the same
table/scale/row/column/seed; a victim or stealing run is skipped when its checkpoint
finished all its epochs, or when every probe that needs it is already recorded. So an
interrupted table continues where it stopped, also on a fresh clone that has only the
committed ``results/*.jsonl``. Stealing runs live in ``runs/tables_<scale>/<victim>_s<seed>/``
under a name made of their flags, so two tables asking for the same attack share one run.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.presets import preset_for, pretrain_run_dir, table_run_dir, victim_run_dir
from models import load_checkpoint
from utils import UserError, append_jsonl, apply_numeric_rules, read_jsonl, run_cli

# per scale: victim datasets, downstream columns, queries, and the OOD query set
SETUP = {
    "cpu": {"victim": "mnistm5k", "victim5": "mnist5k", "columns": ["mnistm5k", "mnist5k"], "queries": 500,
            "victim_train_size": 3000, "ood": "patches",
            "table7_queries": [100, 300, 1000, 3000], "table7_losses": ["softnn", "mse", "infonce"],
            "table9_queries": [100, 300, 1000, 3000],
            "efficiency_queries": [100, 300, 500, 1000], "efficiency_losses": ["mse", "infonce", "softnn"],
            "step_budget": 50_000, "seeds": [0, 1, 2],
            "defense_queries": 1000, "defense_epochs": 50, "noise_sigmas": [0, 0.25, 0.5, 1, 2],
            "detect_sigmas": [0, 20, 40, 60], "poison_strengths": [0, 1, 2, 4],
            "sybil_accounts": [1, 2, 4, 8], "sybil_splits": ["views", "images"],
            "ownership_queries": [300, 1000], "table16_queries": [300, 1000, 3000], "table17_queries": 1000,
            "ownership_source": [],
            "imagenet_columns": ["mnistm5k", "mnist5k", "digitsm"], "imagenet_other": "patches",
            "table3_rows": [("mse", 1000, "patches"), ("infonce", 1000, "patches"), ("mse", 1000, "imagenetval"),
                            ("mse", 1000, "imagenet"), ("infonce", 1000, "imagenetval"), ("infonce", 1000, "imagenet"),
                            ("mse", 3000, "imagenet"), ("infonce", 3000, "imagenet")],
            "table8_queries": [100, 300, 1000, 3000],
            "imagenet_steal": ["--image-size", "28", "-b", "64", "--lr", "0.4", "--epochs", "30",
                               "--temperature", "0.1", "--useaug", "False"], "imagenet_step_budget": 30_000,
            "imagenet_probe": ["--image-size", "28", "--eval-set", "holdout"],
            "study_dataset": "mnistm5k", "study_fractions": [0.01, 0.1, 1.0]},
    "paper": {"victim": "cifar10", "victim5": "svhn", "columns": ["cifar10", "stl10", "svhn"], "queries": 9000,
              "victim_train_size": 50000, "ood": "svhn",
              "table7_queries": [500, 1000, 5000, 10000, 20000, 30000, 50000],
              "table7_losses": ["softnn", "mse", "infonce"],
              "table9_queries": [500, 1000, 5000, 10000, 20000, 30000, 40000, 50000],
              "efficiency_queries": [500, 1000, 5000, 9000], "efficiency_losses": ["mse", "infonce", "softnn"],
              "step_budget": None, "seeds": [0],
              "defense_queries": 9000, "defense_epochs": None, "noise_sigmas": [0, 1, 2, 3, 4],
              "detect_sigmas": [0, 20, 40, 60], "poison_strengths": [0, 1, 2, 4],
              "sybil_accounts": [1, 2, 4, 8], "sybil_splits": ["views", "images"],
              "ownership_queries": [10000, 50000], "table16_queries": [10000, 20000, 30000, 40000, 50000, 60000, 70000],
              "table17_queries": 50000, "ownership_source": ["--force", "True"],
              "imagenet_columns": ["cifar10", "cifar100", "stl10", "svhn", "fashionmnist"], "imagenet_other": "cifar10",
              "table3_rows": [("mse", 50000, "cifar10"), ("infonce", 50000, "cifar10"), ("mse", 50000, "imagenetval"),
                              ("mse", 50000, "imagenet"), ("infonce", 50000, "imagenetval"),
                              ("infonce", 50000, "imagenet"), ("mse", 100000, "imagenet"),
                              ("infonce", 100000, "imagenet"), ("mse", 200000, "imagenet"),
                              ("infonce", 200000, "imagenet"), ("infonce", 250000, "imagenet")],
              "table8_queries": [500, 1000, 5000, 10000, 20000, 30000, 40000, 50000],
              "imagenet_steal": ["-b", "512", "--lr", "0.1", "--lars", "--temperature", "0.1", "--workers", "8"],
              "imagenet_step_budget": None,
              "imagenet_probe": ["-b", "256", "--lars", "--lr", "1.0", "--workers", "8"],
              "study_dataset": "imagenet", "study_fractions": [0.01, 0.1, 1.0]},
}
TABLES = ("table1", "table2", "table5", "table7", "table9", "efficiency")
DEFENSE_TABLES = ("table10", "table11", "table12", "table13", "pow", "poison")
SYBIL_TABLES = ("sybil",)  # several accounts against the per-account defenses (sybil.py)
OWNERSHIP_TABLES = ("table4", "table16", "table17", "table18", "table19", "table20")
OWNERSHIP_LOSSES = ("mse", "softnn", "infonce")
IMAGENET_TABLES = ("table3", "table8")
STUDY_TABLES = ("sslextract",)  # the companion study: classifier extraction with SSL pre-training
STUDY_METHODS = ("none", "rotation", "moco", "simsiam")  # the study's columns, pretrain.PRETRAIN
DISTRIBUTED_SCRIPTS = ("stealsimsiam", "linsimsiam")  # run under torchrun with --nproc > 1
# the tests watermark.py runs for each ownership table (defenses.ownership.TESTS)
OWNERSHIP_TESTS = {"table4": ["wsr", "retrained", "ttest"], "table16": ["wsr", "retrained", "ttest"],
                   "table17": ["wsr", "retrained", "ttest"], "table18": ["l2"], "table19": ["noise_ball"],
                   "table20": ["private_public"]}
BASELINES = ("victim", "random", "pixels")  # rows probed straight from the victim checkpoint


@dataclass
class Step:
    script: str                     # run, steal, stealhead, linear_eval
    argv: list[str]
    done_when: str = ""             # a checkpoint path, or "" for probes (checked in the results file)
    tags: dict = field(default_factory=dict)
    needs: str = ""                 # probes: the checkpoint they read
    needs_more: tuple = ()          # probes: other checkpoints they read (ownership: the victim, the independent)

    def command(self, nproc: int = 1) -> str:
        program = f"-m {self.script}" if "." in self.script else f"{self.script}.py"
        launcher = ["python"]
        if nproc > 1 and self.script in DISTRIBUTED_SCRIPTS:
            launcher = ["torchrun", "--standalone", f"--nproc_per_node={nproc}"]
        return " ".join(launcher + [program] + [shlex.quote(a) for a in self.argv])


def victim_checkpoint(dataset: str, seed: int) -> str:
    return str(victim_run_dir(dataset, seed) / "checkpoint.pt")


def attack_rows(table: str, s: dict) -> list[tuple[str, str, list[str], dict]]:
    """The stolen rows of a table: ``(row, script, steal flags, extra record tags)``."""
    q = str(s["queries"])
    if table == "table1":
        return [("direct", "steal", ["--losstype", "softnn", "--num_queries", q], {}),
                ("recreate_head", "stealhead", ["--num_queries", q], {}),
                ("access_head", "steal", ["--losstype", "infonce", "--victimhead", "True", "--num_queries", q], {})]
    if table in ("table2", "table5"):
        losses = ["mse", "infonce", "softnn", "wasserstein", "supcon", "barlow"]
        if table == "table5":
            losses.insert(5, "symmetrized")
        return [(loss, "steal", ["--losstype", loss, "--num_queries", q], {}) for loss in losses]
    losses = {"table7": s["table7_losses"], "table9": ["softnn"], "efficiency": s["efficiency_losses"]}[table]
    counts = {"table7": s["table7_queries"], "table9": s["table9_queries"],
              "efficiency": s["efficiency_queries"]}[table]
    source = {"table7": ["--datasetsteal", s["ood"]], "table9": ["--force", "True"], "efficiency": []}[table]
    rows = []
    for loss in losses:
        for n in counts:
            extra = []
            if s["step_budget"] and n != s["queries"]:
                # CPU: about the same number of image-steps for every query count (at the table's
                # default count, the stealing defaults as they are, so that run is shared with table2)
                extra = ["--epochs", str(max(10, min(500, s["step_budget"] // n)))]
            rows.append((f"{loss}_{n}", "steal", ["--losstype", loss, "--num_queries", str(n)] + source + extra,
                         {"loss": loss, "queries": n}))
    return rows


def run_name(script: str, flags: list[str]) -> str:
    """A run directory name made of the attack's flags, e.g. ``steal_softnn_q500_patches``."""
    parts, i = [script], 0
    while i < len(flags):
        key, value = flags[i].lstrip("-"), flags[i + 1]
        parts.append({"losstype": value, "num_queries": f"q{value}", "datasetsteal": value,
                      "useval": "val" if value == "True" else "",
                      "force": "train" if value == "True" else "", "victimhead": "head" if value == "True" else "",
                      "epochs": f"e{value}", "watermark": "wm" if value == "True" else "",
                      "query-aug": f"aug{value}"}.get(key, f"{key}{value}"))
        i += 2
    return "_".join(p for p in parts if p)


def plan(table: str, scale: str, seeds: list[int], data: str | None, results: str) -> list[Step]:
    s = SETUP[scale]
    data_flags = ["-data", data] if data else []
    victim_ds = s["victim5"] if table == "table5" else s["victim"]
    steps: list[Step] = []
    for seed in seeds:
        vckpt = victim_checkpoint(victim_ds, seed)
        steps.append(Step("run", ["--dataset", victim_ds, "--seed", str(seed), "--resume", "--scale", scale]
                          + data_flags, done_when=vckpt))
        probes: list[tuple[str, str, str, dict]] = [(row, row, vckpt, {}) for row in BASELINES]
        for row, script, flags, extra_tags in attack_rows(table, s):
            logdir = str(table_run_dir(scale, victim_ds, seed, run_name(script, flags)))
            steps.append(Step(script, ["--victim-checkpoint", vckpt, "--seed", str(seed), "--logdir", logdir,
                                       "--clear"] + flags + data_flags, done_when=f"{logdir}/checkpoint.pt"))
            probes.append((row, "stolen", f"{logdir}/checkpoint.pt", extra_tags))
        for row, modeltype, ckpt, extra_tags in probes:
            for column in s["columns"]:
                tags = {"table": table, "scale": scale, "row": row, "column": column, "seed": str(seed),
                        "victim_train_size": str(s["victim_train_size"]), **extra_tags}
                argv = ["--checkpoint", ckpt, "--modeltype", modeltype, "--dataset-test", column,
                        "--seed", str(seed), "--label", row, "--results", results] + data_flags
                argv += [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")]
                steps.append(Step("linear_eval", argv, tags=tags, needs=ckpt))
    return steps


def _num(x: float) -> str:
    return f"{x:g}"


def defense_columns(table: str, s: dict) -> list[tuple[str, list[str], list[str]]]:
    """A defense table's columns: ``(column, the victim's defense flags, the adversary's flags)``.

    The undefended column (sigma or strength 0) runs the victim behind noise of std 0, which
    answers exactly what an undefended victim answers, through the same code path as the
    defended columns (so a seed's stolen models start from the same initialisation); it is
    one run shared by Tables 10 and 11 and poisoning, and for Table 12 it is the same as
    passive detection (flags counted, nothing replaced).
    """
    q = ["--num_queries", str(s["defense_queries"])]
    q += ["--epochs", str(s["defense_epochs"])] if s["defense_epochs"] else []
    undefended = ["--defenses", "noise", "--sigma", "0"]
    if table in ("table10", "table11"):
        mu = "10" if table == "table10" else "0"
        return [(f"sigma={_num(sig)}",
                 undefended if sig == 0 else ["--defenses", "noise", "--mu", mu, "--sigma", _num(sig)],
                 ["--losstype", "mse"] + q) for sig in s["noise_sigmas"]]
    if table == "table12":
        cols = []
        for metric in ("cosine", "l2"):
            for sig in s["detect_sigmas"]:
                flags = undefended if sig == 0 else ["--defenses", "detect", "--detect-metric", metric, "--sigma",
                                                     _num(sig)]
                cols.append((f"{metric} sigma={_num(sig)}", flags, ["--losstype", "infonce", "--n-views", "2"] + q))
        return cols
    if table == "poison":
        return [(f"strength={_num(x)}",
                 undefended if x == 0 else ["--defenses", "poison", "--poison-strength", _num(x)],
                 ["--losstype", "mse"] + q) for x in s["poison_strengths"]]
    raise KeyError(table)


def seed_victims(table: str, scale: str, seeds: list[int], data: str | None):
    """Per seed, a defense plan's victim: yields ``(setup, data flags, seed, victim checkpoint, the
    run.py step that makes it (resumed, skipped once it exists), the tags of that seed's records)``."""
    s = SETUP[scale]
    data_flags = ["-data", data] if data else []
    for seed in seeds:
        vckpt = victim_checkpoint(s["victim"], seed)
        step = Step("run", ["--dataset", s["victim"], "--seed", str(seed), "--resume", "--scale", scale] + data_flags,
                    done_when=vckpt)
        yield s, data_flags, seed, vckpt, step, {"table": table, "scale": scale, "seed": str(seed),
                                                 "victim_train_size": str(s["victim_train_size"])}


def defense_plan(table: str, scale: str, seeds: list[int], data: str | None, results: str) -> list[Step]:
    """Tables 10-15, the proof-of-work table and prediction poisoning: per seed and column, a
    legitimate user and an adversary facing the same defended victim (Tables 10-12, poison),
    or the training-free measurements of ``measure_defenses.py`` (table13 = Tables 13-15, pow)."""
    steps: list[Step] = []
    for s, data_flags, seed, vckpt, step, base in seed_victims(table, scale, seeds, data):
        steps.append(step)
        if table in ("table13", "pow"):
            tags = {**base, "row": "detection" if table == "table13" else "pow", "column": "all"}
            argv = ["detection" if table == "table13" else "pow", "--victim-checkpoint", vckpt, "--seed", str(seed),
                    "--scale", scale, "--results", results] + data_flags
            steps.append(Step("measure_defenses", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                              tags=tags, needs=vckpt))
            continue
        for column, defense_flags, adversary_flags in defense_columns(table, s):
            common = ["--victim-checkpoint", vckpt, "--seed", str(seed)] + data_flags
            tags = {**base, "row": "legitimate", "column": column}
            name = f"legit_{table}_{run_name('x', defense_flags)[2:] or 'none'}"
            logdir = str(table_run_dir(scale, s["victim"], seed, name))
            steps.append(Step("legitimate", common + defense_flags + [
                "--num_queries", str(s["defense_queries"]), "--logdir", logdir, "--clear", "--results", results]
                + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")], tags=tags, needs=vckpt))
            logdir = str(table_run_dir(scale, s["victim"], seed, run_name("steal", adversary_flags + defense_flags)))
            steps.append(Step("steal", common + ["--logdir", logdir, "--clear"] + adversary_flags + defense_flags,
                              done_when=f"{logdir}/checkpoint.pt"))
            tags = {**base, "row": "adversary", "column": column}
            argv = ["--checkpoint", f"{logdir}/checkpoint.pt", "--modeltype", "stolen", "--dataset-test", s["victim"],
                    "--seed", str(seed), "--label", "adversary", "--results", results] + data_flags
            steps.append(Step("linear_eval", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                              tags=tags, needs=f"{logdir}/checkpoint.pt"))
    return steps


# the per-account defenses of the Sybil table, each in the setting of its own table: detection as
# Table 12's cosine column with sigma 20, proof of work with 0-16 bits per query (the pow table's widest)
SYBIL_DEFENSES = {"detect": ["--defenses", "detect", "--detect-metric", "cosine", "--sigma", "20"],
                  "pow": ["--defenses", "pow", "--pow-bits-min", "0", "--pow-bits-max", "16"]}


def sybil_run_cells(s: dict) -> list[tuple[str, str, list[str], dict]]:
    """The Sybil table's cells: ``(row = defense, column, steal flags, extra tags)``. The attacker is
    Table 12's (InfoNCE on two augmented views of each image, the defense tables' queries and
    epochs) spread over K accounts; above one account, once per ``--sybil-split`` (column
    ``K=k`` for views, the default, ``K=k images`` for images). One account is the same attack
    as steal.py without --accounts (it is named in the flags so that its run records accounts.json)."""
    adversary = ["--losstype", "infonce", "--n-views", "2", "--num_queries", str(s["defense_queries"])]
    adversary += ["--epochs", str(s["defense_epochs"])] if s["defense_epochs"] else []
    cells = []
    for defense, flags in SYBIL_DEFENSES.items():
        for k in s["sybil_accounts"]:
            for split in (s["sybil_splits"] if k > 1 else s["sybil_splits"][:1]):
                column = f"K={k}" if split == "views" else f"K={k} {split}"
                extra = ["--accounts", str(k)] + ([] if split == "views" else ["--sybil-split", split])
                cells.append((defense, column, adversary + flags + extra,
                              {"defense": defense, "accounts": str(k), "split": split}))
    return cells


def sybil_plan(table: str, scale: str, seeds: list[int], data: str | None, results: str) -> list[Step]:
    """The Sybil table: per seed and cell, a stealing run through K accounts of the defended victim,
    the stolen encoder's linear probe (``what=probe``) and the run's per-account defense statistics
    (``what=accounts``, ``python sybil.py``: flagged fraction, deviation score, puzzle bits)."""
    steps: list[Step] = []
    for s, data_flags, seed, vckpt, step, base in seed_victims(table, scale, seeds, data):
        steps.append(step)
        for row, column, flags, extra in sybil_run_cells(s):
            logdir = str(table_run_dir(scale, s["victim"], seed, run_name("steal", flags)))
            ckpt = f"{logdir}/checkpoint.pt"
            steps.append(Step("steal", ["--victim-checkpoint", vckpt, "--seed", str(seed), "--logdir", logdir,
                                        "--clear"] + flags + data_flags, done_when=ckpt))
            tags = {**base, "row": row, "column": column, **extra, "what": "probe"}
            argv = ["--checkpoint", ckpt, "--modeltype", "stolen", "--dataset-test", s["victim"], "--seed", str(seed),
                    "--label", "adversary", "--results", results] + data_flags
            steps.append(Step("linear_eval", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                              tags=tags, needs=ckpt))
            tags = {**tags, "what": "accounts"}
            steps.append(Step("sybil", ["--run", logdir, "--results", results]
                              + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")], tags=tags, needs=ckpt))
    return steps


def _steal_epochs(s: dict, n: int) -> list[str]:
    """CPU: about the same number of image-steps for every query count (``step_budget``)."""
    return ["--epochs", str(max(10, min(500, s["step_budget"] // n)))] if s["step_budget"] else []


def ownership_suspects(table: str, s: dict) -> list[tuple[str, str, list[str], dict]]:
    """An ownership table's rows: ``(row, victim, steal flags or a special suspect, extra tags)``.

    ``victim`` is ``wm`` (the watermarked victim) or ``sup`` (the supervised victim of Table
    20). A row whose flags are ``["victim"]``, ``["random"]`` or ``["independent"]`` is that
    encoder itself; any other row is a copy stolen with those flags. Copies of the watermarked
    victim are stolen with ``--watermark True`` (steal.py then also logs their WSR).
    """
    own, counts = [], s["ownership_queries"]
    for loss in OWNERSHIP_LOSSES:
        for n in counts:
            own.append((f"{loss}_{n}", "wm", ["--losstype", loss, "--num_queries", str(n), "--watermark", "True"]
                        + s["ownership_source"] + _steal_epochs(s, n), {"loss": loss, "queries": n}))
    controls = [("victim", "wm", ["victim"], {}), ("independent", "wm", ["independent"], {}),
                ("random", "wm", ["random"], {})]
    if table == "table4":
        return controls + own
    if table == "table16":
        rows = []
        for loss in OWNERSHIP_LOSSES:
            for n in s["table16_queries"]:
                rows.append((f"{loss}_{n}", "wm", ["--losstype", loss, "--num_queries", str(n), "--datasetsteal",
                                                   s["ood"], "--watermark", "True"] + _steal_epochs(s, n),
                             {"loss": loss, "queries": n}))
        return controls + rows
    if table == "table17":
        n, rows = s["table17_queries"], []
        for loss in OWNERSHIP_LOSSES:
            for aug in ("none", "standard", "rotation"):
                flags = ["--losstype", loss, "--num_queries", str(n), "--watermark", "True"] + s["ownership_source"]
                flags += [] if aug == "none" else ["--query-aug", aug]
                rows.append((f"{loss}_{aug}", "wm", flags + _steal_epochs(s, n), {"loss": loss, "aug": aug}))
        return controls + rows
    if table in ("table18", "table19"):
        return controls[1:] + own if table == "table18" else controls + own
    if table == "table20":
        n = counts[-1]
        sup = [("supervised_victim", "sup", ["victim"], {"model": "S"}),
               ("supervised_mse", "sup", ["--losstype", "mse", "--num_queries", str(n)] + s["ownership_source"]
                + _steal_epochs(s, n),
                {"model": "S", "loss": "mse", "queries": n})]
        return ([(r, v, f, {**t, "model": "U"}) for r, v, f, t in controls]
                + [(r, v, f, {**t, "model": "U"}) for r, v, f, t in own if t["queries"] == n] + sup)
    raise KeyError(table)


def ownership_plan(table: str, scale: str, seeds: list[int], data: str | None, results: str) -> list[Step]:
    """Tables 4 and 16-20: per seed, the watermarked victim (run.py --watermark True), an
    independently trained encoder (run.py's plain victim of seed + 1), for Table 4 the plain
    victim of the same seed (the watermark's cost, probed beside the watermarked one), for Table
    20 a supervised victim (simclrsup.py); the copies each row needs; and one watermark.py
    measurement per row. Copies live beside the other tables' runs, named by their flags, so
    tables with the same attack share it (Tables 4, 18, 19 and 20 share theirs)."""
    s = SETUP[scale]
    data_flags = ["-data", data] if data else []
    ds = s["victim"]
    steps: list[Step] = []
    for seed in seeds:
        wm = str(victim_run_dir(ds, seed, kind="victimwm") / "checkpoint.pt")
        independent = victim_checkpoint(ds, seed + 1)
        sup = str(victim_run_dir(ds, seed, kind="supervised") / "checkpoint.pt")
        victims = {"wm": wm, "sup": sup}
        train = ["--dataset", ds, "--resume", "--scale", scale] + data_flags
        steps.append(Step("run", train + ["--seed", str(seed), "--watermark", "True"], done_when=wm))
        steps.append(Step("run", train + ["--seed", str(seed + 1)], done_when=independent))
        base = {"table": table, "scale": scale, "seed": str(seed), "victim_train_size": str(s["victim_train_size"])}
        if table == "table4":  # what the watermark costs: both victims of this seed, probed downstream
            plain = victim_checkpoint(ds, seed)
            steps.append(Step("run", train + ["--seed", str(seed)], done_when=plain))
            for row, ckpt in (("victim_plain", plain), ("victim_watermarked", wm)):
                tags = {**base, "row": row, "column": ds}
                argv = ["--checkpoint", ckpt, "--modeltype", "victim", "--dataset-test", ds, "--seed", str(seed),
                        "--label", row, "--results", results] + data_flags
                steps.append(Step("linear_eval", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                                  tags=tags, needs=ckpt))
        if table == "table20":
            steps.append(Step("simclrsup", ["--dataset", ds, "--seed", str(seed), "--resume", "--scale", scale]
                              + data_flags, done_when=sup))
        for row, victim, flags, extra in ownership_suspects(table, s):
            vckpt = victims[victim]
            if flags[0] in ("victim", "random"):
                suspect = flags[0]
            elif flags[0] == "independent":
                suspect = independent
            else:
                name = run_name("steal", flags)
                logdir = str(table_run_dir(scale, f"{ds}_wm" if victim == "wm" else f"{ds}_supervised", seed, name))
                suspect = f"{logdir}/checkpoint.pt"
                steps.append(Step("steal", ["--victim-checkpoint", vckpt, "--seed", str(seed), "--logdir", logdir,
                                            "--clear"] + flags + data_flags, done_when=suspect))
            tags = {**base, "row": row, "column": "all", **{k: str(v) for k, v in extra.items()}}
            argv = ["--victim-checkpoint", vckpt, "--suspect", suspect, "--tests", *OWNERSHIP_TESTS[table],
                    "--seed", str(seed), "--scale", scale, "--label", row, "--results", results] + data_flags
            if {"ttest", "l2"} & set(OWNERSHIP_TESTS[table]):
                argv += ["--independent", independent]
            more = tuple(p for p in (vckpt, independent) if p != suspect)
            steps.append(Step("watermark", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                              tags=tags, needs=suspect if suspect not in ("victim", "random") else vckpt,
                              needs_more=more))
    return steps


def imagenet_rows(table: str, s: dict) -> list[tuple[str, str, int, str, dict]]:
    """Table 3 or 8's stolen rows: ``(row, loss, queries, query set, extra tags)``; the query set
    ``imagenetval`` is ImageNet's val folder (``--useval True``)."""
    if table == "table3":
        return [(f"{loss}_{n}_{q}", loss, n, q, {"loss": loss, "queries": n, "query_set": q})
                for loss, n, q in s["table3_rows"]]
    return [(f"infonce_{n}", "infonce", n, s["imagenet_other"], {"loss": "infonce", "queries": n})
            for n in s["table8_queries"]]


def imagenet_extra(s: dict, n: int) -> list[str]:
    """Per query count: CPU gives small query sets more epochs (about ``imagenet_step_budget``
    image-steps, 10 to 300 epochs); paper scale lowers the batch of 512 below 4 batches of queries."""
    if s["imagenet_step_budget"]:
        epochs = min(300, max(10, s["imagenet_step_budget"] // n))
        return [] if epochs == 30 else ["--epochs", str(epochs)]
    return ["-b", "128"] if n < 4 * 512 else []


def imagenet_plan(table: str, scale: str, seeds: list[int], data: str | None, results: str,
                  pretrained: str | None = None) -> list[Step]:
    """Tables 3 and 8: steal an ImageNet SimSiam victim (stealsimsiam.py) and probe the copies, the
    victim and a random encoder on each column (linsimsiam.py).

    Paper scale: the published checkpoint (``--pretrained``) and ImageNet under ``-data``. CPU
    scale: per seed, run.py's mnistm5k victim re-exported in SimSiam format beside an ImageFolder
    of mnistm5k (``scripts/imagenet_cpu.py``, in ``runs/imagenet_cpu_s<seed>``), so the same code
    path runs end to end on the offline data."""
    s = SETUP[scale]
    steps: list[Step] = []
    for seed in seeds:
        if scale == "cpu":
            vckpt = victim_checkpoint(s["victim"], seed)
            steps.append(Step("run", ["--dataset", s["victim"], "--seed", str(seed), "--resume", "--scale", scale],
                              done_when=vckpt))
            root = f"runs/imagenet_cpu_s{seed}"
            victim = f"{root}/simsiam_victim.pth.tar"
            steps.append(Step("scripts.imagenet_cpu", ["--dataset", s["victim"], "--out", root,
                                                       "--victim-checkpoint", vckpt], done_when=victim))
            data_flags = ["--data", root]
        else:
            victim = pretrained or "models/checkpoint_0099-batch256.pth.tar"
            data_flags = ["--data", data] if data else []
        probes = [("victim", "victim", ["--pretrained", victim], victim, {}),
                  ("random", "random", ["--pretrained", victim], victim, {})]
        for row, loss, n, qset, extra in imagenet_rows(table, s):
            source = ["--datasetsteal", "imagenet", "--useval", "True"] if qset == "imagenetval" else [
                "--datasetsteal", qset]
            flags = ["--losstype", loss, "--num_queries", str(n)] + source + imagenet_extra(s, n)
            logdir = str(table_run_dir(scale, "imagenet", seed, run_name("stealsimsiam", flags)))
            steps.append(Step("stealsimsiam", ["--pretrained", victim, "--seed", str(seed), "--logdir", logdir,
                                               "--resume"] + s["imagenet_steal"] + flags + data_flags,
                              done_when=f"{logdir}/checkpoint.pt"))
            probes.append((row, "stolen", ["--checkpoint", f"{logdir}/checkpoint.pt"], f"{logdir}/checkpoint.pt",
                           extra))
        for row, modeltype, source, needs, extra in probes:
            for column in s["imagenet_columns"]:
                tags = {"table": table, "scale": scale, "row": row, "column": column, "seed": str(seed),
                        **{k: str(v) for k, v in extra.items()}}
                argv = source + ["--modeltype", modeltype, "--dataset", column, "--seed", str(seed), "--label", row,
                                 "--results", results] + s["imagenet_probe"] + data_flags
                steps.append(Step("linsimsiam", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                                  tags=tags, needs=needs))
    return steps


def study_plan(table: str, scale: str, seeds: list[int], data: str | None, results: str) -> list[Step]:
    """The classifier-extraction study (sslextract.py): per seed a supervised victim (simclrsup.py),
    each method's pre-trained encoder (``--pretrain-only``, no queries), then one distillation per
    method and query fraction, each a record with row = method and column = fraction."""
    s = SETUP[scale]
    ds = s["study_dataset"]
    data_flags = ["--data", data] if data else []
    steps: list[Step] = []
    for seed in seeds:
        victim = str(victim_run_dir(ds, seed, kind="supervised") / "checkpoint.pt")
        steps.append(Step("simclrsup", ["--dataset", ds, "--seed", str(seed), "--resume", "--scale", scale]
                          + data_flags, done_when=victim))
        common = ["--dataset", ds, "--seed", str(seed), "--scale", scale] + data_flags
        for method in STUDY_METHODS:
            pretrained = None
            if method != "none":
                arch = preset_for(ds, scale)
                pretrained = str(pretrain_run_dir(method, ds, arch["arch"], arch["width"], seed) / "checkpoint.pt")
                steps.append(Step("sslextract", ["--pretrain", method, "--pretrain-only", "--pretrained", pretrained]
                                  + common, done_when=pretrained))
            for fraction in s["study_fractions"]:
                tags = {"table": table, "scale": scale, "row": method, "column": f"{fraction:g}", "seed": str(seed)}
                flags = ["--pretrain", method, "--query-fraction", f"{fraction:g}"]
                logdir = str(table_run_dir(scale, f"{ds}_supervised", seed, run_name("sslextract", flags)))
                argv = flags + common + ["--victim-checkpoint", victim, "--logdir", logdir, "--clear",
                                         "--results", results] + (["--pretrained", pretrained] if pretrained else [])
                steps.append(Step("sslextract", argv + [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")],
                                  tags=tags, needs=pretrained or victim, needs_more=(victim,)))
    return steps


def checkpoint_finished(path: str) -> bool:
    """A checkpoint that completed every epoch its config asked for."""
    full = ROOT / path
    if not full.is_file():
        return False

    try:
        ckpt = load_checkpoint(full)
    except UserError:
        return False
    if not ckpt.get("config"):  # not a training run's checkpoint (e.g. an exported SimSiam victim): it exists
        return True
    config = ckpt.get("config") or {}
    return ckpt.get("epoch") == config.get("epochs", config.get("pretrain_epochs"))


def probe_done(step: Step, records: list[dict]) -> bool:
    # a step that records one of several kinds of record per cell (the Sybil table's probe and its
    # account statistics) names the kind in its "what" tag
    keys = ("table", "scale", "row", "column", "seed") + (("what",) if "what" in step.tags else ())
    return any(all(str(r.get(k)) == str(step.tags[k]) for k in keys) for r in records)


def reusable_pixels(step: Step, results_dir: Path) -> dict | None:
    """A pixels record of another table with the same scale, column and seed. The raw-pixel
    probe does not depend on the victim, so it is the same computation in every table (and
    at 28 px its 2,352-d features make it the slowest probe)."""
    if step.tags.get("row") != "pixels":
        return None
    for path in sorted(results_dir.glob(f"*_{step.tags['scale']}.jsonl")):
        for r in read_jsonl(path):
            if r.get("row") == "pixels" and all(str(r.get(k)) == str(step.tags[k])
                                                for k in ("scale", "column", "seed")):
                return {**r, **step.tags, "reused_from": path.name}
    return None


def pending(steps: list[Step], records: list[dict]) -> list[bool]:
    """Which steps still have to run: missing probes, and the runs those probes (or the
    stealing runs they need) read that have not finished."""
    todo = [False] * len(steps)
    needed: set[str] = set()
    for i, step in enumerate(steps):
        if not step.done_when and not probe_done(step, records):
            todo[i] = True
            needed.add(step.needs)
            needed.update(step.needs_more)
    # a stealing run that must run needs its victim too (scan the producers three times: steals, then
    # victims, then what a victim is made from, e.g. the run.py victim of an exported SimSiam one)
    for _ in range(3):
        for i, step in enumerate(steps):
            if step.done_when in needed and not checkpoint_finished(step.done_when):
                todo[i] = True
                for flag in ("--victim-checkpoint", "--pretrained"):
                    if flag in step.argv:
                        needed.add(step.argv[step.argv.index(flag) + 1])
    return todo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=TABLES + IMAGENET_TABLES + DEFENSE_TABLES + SYBIL_TABLES + OWNERSHIP_TABLES
                   + STUDY_TABLES,
                   help="which table (defenses: table10 noise mean 10, table11 noise mean 0, table12 detection, "
                        "table13 detection error rates = Tables 13-15, pow proof of work, poison; sybil: the table12 "
                        "attacker spread over 1-8 accounts against detection and proof of work; ownership: table4 "
                        "watermark t-test and the watermark's cost, table16 WSR by queries and loss, table17 WSR by "
                        "query augmentation, table18 l2 distance, table19 noise-ball test, table20 private vs public; "
                        "ImageNet: table3 losses and query sets, table8 number of CIFAR10 queries; sslextract: the "
                        "companion study, classifier extraction with SSL pre-training by query fraction)")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"],
                   help="offline CPU analogue, or the paper's setup")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds (victim and attack): default 0 1 2 at cpu scale, 0 at paper scale; the report "
                        "gives mean and 95%% confidence interval over them")
    p.add_argument("-data", "--data", dest="data", default=None, help="root of the real datasets (paper scale)")
    p.add_argument("--results", default=None, help="results file (default: results/<table>_<scale>.jsonl)")
    p.add_argument("--pretrained", default=None,
                   help="table3/table8 at paper scale: the SimSiam victim checkpoint (default "
                        "models/checkpoint_0099-batch256.pth.tar, the reference's)")
    p.add_argument("--nproc", type=int, default=1,
                   help="table3/table8: processes (GPUs) per stealsimsiam.py / linsimsiam.py run; above 1 they run "
                        "under `torchrun --standalone --nproc_per_node N`")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return apply_numeric_rules(p)


def main(argv=None) -> list[Step]:
    args = build_parser().parse_args(argv)
    results = args.results or f"results/{args.table}_{args.scale}.jsonl"
    seeds = args.seeds if args.seeds is not None else SETUP[args.scale]["seeds"]
    if args.table in IMAGENET_TABLES:
        steps = imagenet_plan(args.table, args.scale, seeds, args.data, results, args.pretrained)
    elif args.table in STUDY_TABLES:
        steps = study_plan(args.table, args.scale, seeds, args.data, results)
    elif args.table in SYBIL_TABLES:
        steps = sybil_plan(args.table, args.scale, seeds, args.data, results)
    else:
        make = (defense_plan if args.table in DEFENSE_TABLES else ownership_plan if args.table in OWNERSHIP_TABLES
                else plan)
        steps = make(args.table, args.scale, seeds, args.data, results)
    if args.dry_run:
        for step in steps:
            print(step.command(args.nproc))
        return steps
    import os

    os.chdir(ROOT)
    todo = pending(steps, read_jsonl(results))
    for i, (step, needed) in enumerate(zip(steps, todo), 1):
        if not needed:
            print(f"[{i}/{len(steps)}] done already: {step.command()}", flush=True)
            continue
        reuse = reusable_pixels(step, Path(results).parent)
        if reuse is not None:
            append_jsonl(results, reuse)
            print(f"[{i}/{len(steps)}] pixels probe reused from {reuse['reused_from']}: {step.command()}", flush=True)
            continue
        print(f"[{i}/{len(steps)}] {step.command(args.nproc)}", flush=True)
        if args.nproc > 1 and step.script in DISTRIBUTED_SCRIPTS:
            import subprocess

            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(args.nproc), f"{step.script}.py", *step.argv]
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                raise UserError(f"step {i} failed: {step.command(args.nproc)}")
        else:
            importlib.import_module(step.script).main(step.argv)
    print(f"\n{args.table} ({args.scale}): results in {results}; `python report.py` writes results/REPORT.md")
    return steps


if __name__ == "__main__":
    run_cli(main)
