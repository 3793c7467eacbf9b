"""Measurements of the serving-side defenses that need no training (Tables 13-15 and the PoW table).

* ``detection``: false-positive and false-negative rates of similar-query detection by
  threshold (the paper's Tables 13-15). Per draw, ``--n`` distinct images are drawn at
  random from the victim's query pool. **False positive**: one of those distinct images
  (a legitimate user's queries) is flagged, i.e. its nearest earlier answer in the same
  account's history is within the threshold. **False negative**: an augmented view of an
  image the account already sent (the attacker's second view, drawn with the attacker's
  augmentation) is not flagged. Mean and standard deviation over ``--draws`` draws.
* ``pow``: what calibrated proof of work costs three customers for the same number of
  queries: a legitimate user (distinct images), a single-view attacker (distinct images,
  the MSE attack) and a two-view attacker (two augmented views of each image, the
  InfoNCE attack of Table 12): puzzles, bits, expected hashes and measured solve time.

Both append one JSON record per row to ``--results``; ``scripts/tables.py`` runs them and
``report.py`` prints them beside the paper's numbers.

  python measure_defenses.py detection --victim-checkpoint CKPT --results results/table13_cpu.jsonl
  python measure_defenses.py pow --victim-checkpoint CKPT --results results/pow_cpu.jsonl
"""
from __future__ import annotations

import time

import torch

from data_aug import to_float
from defenses.detect import DETECT_ON, is_similar
from defenses.pow_gate import ProofOfWork
from defenses.similarity import nearest_earlier
from service.victim import EncoderBackend, VictimService

# thresholds swept per scale, (metric, watched output) -> values; paper: the paper's Tables 13-15
GRIDS = {
    "paper": {("l2", "head"): [12.0, 13.0, 14.0], ("l2", "rep"): [17.0, 18.0, 19.0],
              ("cosine", "head"): [0.45, 0.5, 0.55, 0.6]},
    "cpu": {("l2", "head"): [0.5, 0.75, 1.0], ("l2", "rep"): [1.0, 1.5, 2.0],
            ("cosine", "head"): [0.8, 0.85, 0.9, 0.95], ("cosine", "rep"): [0.96, 0.98, 0.99]},
}
# the attacker's view augmentation at each scale (its --crop-min-scale / --hflip-p defaults)
ATTACKER_VIEWS = {"paper": {"crop_min_scale": 0.08, "hflip_p": 0.5}, "cpu": {"crop_min_scale": 0.8, "hflip_p": 0.0}}


def _outputs(backend: EncoderBackend, images: torch.Tensor) -> dict[str, torch.Tensor]:
    out = backend.outputs(to_float(images))
    return {k: v.cpu() for k, v in out.items()}


def detection_rates(backend: EncoderBackend, pool_images: torch.Tensor, *, grid: dict, augment, n: int,
                    draws: int, seed: int = 0) -> list[dict]:
    """FP / FN rates (%) by threshold: one row per (metric, watched output, threshold)."""
    per = {key: {t: ([], []) for t in ts} for key, ts in grid.items()}
    for draw in range(draws):
        gen = torch.Generator().manual_seed(seed * 1000 + draw)
        idx = torch.randperm(len(pool_images), generator=gen)[:n]
        x = pool_images[idx]
        views = augment(x, gen)
        plain, aug = _outputs(backend, x), _outputs(backend, views)
        for (metric, on), thresholds in grid.items():
            key = DETECT_ON[on]
            benign, _ = nearest_earlier(plain[key], None, metric)       # each image against the earlier ones
            repeat, _ = nearest_earlier(aug[key], plain[key], metric)   # each view after all the originals
            for t in thresholds:
                per[(metric, on)][t][0].append(100 * is_similar(benign[1:], metric, t).float().mean().item())
                per[(metric, on)][t][1].append(100 * (~is_similar(repeat, metric, t)).float().mean().item())
    rows = []
    for (metric, on), by_t in per.items():
        for t, (fp, fn) in by_t.items():
            fp_t, fn_t = torch.tensor(fp), torch.tensor(fn)
            rows.append({"metric": metric, "on": on, "threshold": t, "n": n, "draws": draws,
                         "fp_mean": fp_t.mean().item(), "fp_std": fp_t.std().item() if draws > 1 else 0.0,
                         "fn_mean": fn_t.mean().item(), "fn_std": fn_t.std().item() if draws > 1 else 0.0})
    return rows


def pow_costs(backend: EncoderBackend, pool_images: torch.Tensor, *, augment, queries: int, batch: int,
              bits_min: int, bits_max: int, threshold: float, on: str, seed: int = 0) -> list[dict]:
    """What one service with calibrated PoW costs three customers for ``queries`` queries each."""
    gen = torch.Generator().manual_seed(seed)
    images = pool_images[:queries]
    half = images[:queries // 2]
    views = torch.cat([augment(half, gen), augment(half, gen)])
    # two views of each image, sent image by image: (x1, x1'), (x2, x2'), ...
    paired = torch.stack([views[:len(half)], views[len(half):]], 1).flatten(0, 1)
    customers = {"legitimate": images, "attacker_1view": images, "attacker_2views": paired}
    rows = []
    for role, x in customers.items():
        defense = ProofOfWork(bits_min, bits_max, on, threshold)
        service = VictimService(backend, defenses=[defense])
        conn = service.connect(role)
        t0 = time.perf_counter()
        for start in range(0, len(x), batch):
            conn.answer(to_float(x[start:start + batch]))
        state = service.accounts[role].state["pow"]
        rows.append({"role": role, "queries": len(x), "batch": batch, "bits_min": bits_min, "bits_max": bits_max,
                     "threshold": threshold, "on": on, "deviation_score": ProofOfWork.score(state),
                     "puzzles": conn.puzzles, "bits": state["bits_paid"],
                     "expected_hashes": state["expected_hashes"], "hashes": conn.pow_hashes,
                     "solve_seconds": round(conn.pow_seconds, 4), "wall_seconds": round(time.perf_counter() - t0, 3)})
    legit = rows[0]["expected_hashes"]
    for row in rows:
        row["cost_ratio_vs_legitimate"] = row["expected_hashes"] / legit
    return rows
