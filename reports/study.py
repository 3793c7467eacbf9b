"""The companion study's part of results/REPORT.md: classifier extraction with self-supervised pre-training.

Reads the records ``sslextract.py`` appends under ``scripts/tables.py sslextract`` (row = the
pre-training method, column = the query fraction, one record per seed) and writes the table of
top-1 / top-5 / agreement beside the study's numbers, a plot of top-1 against the fraction, and
the claims: each self-supervised pre-training against none at the 1% fraction (the study's main
claim, MoCo lifting 8.2% to 39.4%), and the gap at 100%. Claims follow the one statistics rule
(:mod:`reports.stats`): paired by seed, since every method of a seed steals the same victim
(Welch where the seeds differ).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from reports.captions import header
from reports.stats import (
    Difference,
    Estimate,
    contrast,
    describe,
    difference,
    estimate,
    exceeds,
    mean_sd,
    pairing_units,
    save_plot,
)

STUDY_TABLES = ("sslextract",)
METHODS = ("none", "rotation", "moco", "simsiam")
NAMES = {"none": "none (supervised baseline)", "rotation": "rotation", "moco": "MoCo v2", "simsiam": "SimSiam"}


def study_records(records: list[dict]) -> dict:
    """{scale: {method: {fraction: {unit: record}}}} (unit: the seed, :func:`reports.stats.pairing_units`),
    the last record of a cell and seed winning."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    records = [r for r in records if r.get("table") in STUDY_TABLES and "metrics" in r and "query_fraction" in r]
    for r, unit in zip(records, pairing_units(records)):
        out[r.get("scale", "?")][r["row"]][float(r["query_fraction"])][unit] = r
    return out


def _values(seeds: dict, key: str) -> list[float]:
    """One metric of a cell's records, one value per seed."""
    return [r["metrics"][key] for r in seeds.values()]


def _est(seeds: dict, key: str) -> Estimate | None:
    return estimate(_values(seeds, key))


def _top1(cells: dict, method: str, fraction: float) -> dict:
    """{unit: top-1} of one cell."""
    return {u: r["metrics"]["top1"] for u, r in cells.get(method, {}).get(fraction, {}).items()}


def paired_gap(cells: dict, a: str, b: str, fraction: float) -> Difference | None:
    """top-1 of method ``a`` minus method ``b`` at ``fraction`` by the rule (paired by seed when the two
    cells share their seeds, else Welch)."""
    return difference(_top1(cells, a, fraction), _top1(cells, b, fraction))


def _shrink(cells: dict, low: float, high: float) -> Difference | None:
    """MoCo's gain over none at ``low`` minus its gain at ``high`` (per seed when the four cells share
    their seeds)."""
    return contrast([(1.0, _top1(cells, "moco", low)), (-1.0, _top1(cells, "none", low)),
                     (-1.0, _top1(cells, "moco", high)), (1.0, _top1(cells, "none", high))])


def study_claims(records: list[dict], scale: str = "cpu") -> list[tuple[str, str, str]]:
    cells = study_records(records).get(scale)
    if not cells or "none" not in cells:
        return []
    out = []
    low = min(f for m in cells.values() for f in m)
    base = _est(cells["none"].get(low, {}), "top1")
    for method, headline in (("moco", " (the study's main claim: 8.2% → 39.4% on ImageNet)"),
                             ("rotation", " (the study: 8.2% → 17.1%)"), ("simsiam", " (the study: 8.2% → 16.8%)")):
        if method not in cells or low not in cells[method]:
            continue
        gap = paired_gap(cells, method, "none", low)
        out.append((f"Classifier extraction: {NAMES[method]} pre-training beats no pre-training at the "
                    f"{100 * low:g}% query fraction{headline}", exceeds(gap),
                    f"top-1 mean ± std over seeds: {NAMES[method]} "
                    f"{mean_sd(_values(cells[method][low], 'top1'))}, "
                    f"none {mean_sd(base.values if base else ())}; gap {describe(gap)}"))
    high = max(f for m in cells.values() for f in m)
    if high > low and "moco" in cells and high in cells["moco"] and high in cells["none"]:
        at_low, at_high = paired_gap(cells, "moco", "none", low), paired_gap(cells, "moco", "none", high)
        shrink = _shrink(cells, low, high)
        out.append((f"Classifier extraction: the gain of MoCo pre-training shrinks when {100 * high:g}% of the pool "
                    f"is queried (the study: +31.2 points at 1%, +0.7 at 100%)", exceeds(shrink),
                    f"top-1 gap MoCo − none: {at_low} at {100 * low:g}%, {at_high} at {100 * high:g}%; "
                    f"the gap's drop: {describe(shrink)}"))
    return out


def plot_study(cells: dict, path: Path, title: str) -> None:
    def draw(ax):
        for method in METHODS:
            if method not in cells:
                continue
            fractions = sorted(cells[method])
            ests = [_est(cells[method][f], "top1") for f in fractions]
            ax.errorbar([100 * f for f in fractions], [e.mean for e in ests],
                        yerr=[e.half_width or 0.0 for e in ests], marker="o", capsize=3, label=NAMES[method])
        ax.set_xscale("log")
        ax.set_xlabel("% of the pool queried")
        ax.set_ylabel("top-1 of the stolen classifier (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)

    save_plot(path, draw)


def study_sections(records: list[dict], paper: dict, out_dir: Path) -> list[str]:
    ref = paper.get("sslextract", {})
    lines: list[str] = []
    for scale, cells in sorted(study_records(records).items()):
        fractions = sorted({f for m in cells.values() for f in m})
        any_cell = next(iter(next(iter(next(iter(cells.values())).values())).values()))
        victims = [r["victim"]["top1"] for m in cells.values() for f in m.values() for r in f.values()]
        counts = sorted({len(f) for m in cells.values() for f in m.values()})
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        png = out_dir / f"sslextract_{scale}.png"
        plot_study(cells, png, f"classifier extraction ({scale}): top-1 vs query fraction (95% CI)")
        lines += header({"title": "Classifier extraction with SSL pre-training", **ref}, "sslextract", scale,
                        [r for r in records if r.get("table") == "sslextract" and r.get("scale", "?") == scale])
        lines += [f"{seeds} seed(s) per cell; pool of {any_cell['pool']:,} images; test set of {any_cell['n_test']:,} "
                  f"held-out images; the victim answers `{any_cell['victim_output']}`; victim classifier top-1 "
                  f"{estimate(sorted(set(victims)))} (paper: {' / '.join(map(str, ref.get('victim', [])))}). "
                  "Cells: top-1 mean ± 95% CI / top-5 mean / agreement with the victim mean (%); the study's "
                  "top-1 / top-5 in the last columns.", "",
                  f"![top-1 against the query fraction]({png.name})", "",
                  "| fraction | queries | " + " | ".join(NAMES[m] for m in METHODS if m in cells)
                  + " | paper (" + " / ".join(NAMES[m] for m in METHODS) + ") |",
                  "|---|---|" + "---|" * (sum(m in cells for m in METHODS) + 1)]
        for f in fractions:
            queries = sorted({r["queries"] for m in cells.values() for r in m.get(f, {}).values()})
            row = []
            for m in METHODS:
                if m not in cells:
                    continue
                c = cells[m].get(f, {})
                t1, t5, ag = _est(c, "top1"), _est(c, "top5"), _est(c, "agreement")
                row.append(f"{t1} / {t5.mean:.1f} / {ag.mean:.1f}" if t1 else "-")
            paper_cells = [ref.get("cells", {}).get(m, {}).get(f if f != 1.0 else 1) for m in METHODS]
            lines.append(f"| {100 * f:g}% | {', '.join(map(str, queries))} | " + " | ".join(row) + " | "
                         + " ; ".join(f"{p[0]:.1f}/{p[1]:.1f}" if p else "-" for p in paper_cells) + " |")
        low = fractions[0]
        gaps = {m: paired_gap(cells, m, "none", low) for m in METHODS[1:] if m in cells and low in cells[m]}
        verdicts = [f"{exceeds(d)} for {NAMES[m]} ({d} points, {d.how})" for m, d in gaps.items() if d]
        if "none" in cells and verdicts:
            lines += ["", f"The study's main claim, self-supervised pre-training beats none at {100 * low:g}% of the "
                      f"pool: **{'; '.join(verdicts)}**."]
        lines += ["", "Top-1 mean ± std over seeds (the form the issue asks for): " + "; ".join(
            f"{NAMES[m]} at {100 * f:g}%: {mean_sd(_values(cells[m][f], 'top1'))}"
            for m in METHODS if m in cells for f in fractions if f in cells[m]) + "."]
    return lines
