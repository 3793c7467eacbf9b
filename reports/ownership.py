"""The ownership part of results/REPORT.md: Tables 4 and 16-20 (watermark and dataset inference).

Reads the records ``watermark.py`` appends (``"what": "ownership"``, one per table, row and
seed; written by ``scripts/tables.py table4|table16|...|table20``) and Table 4's two probe
records of the victims with and without the watermark. Per row: mean ± 95% confidence
interval over seeds of each statistic, and how many seeds gave each verdict.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from reports.captions import header
from reports.stats import (
    EQUIVALENCE_MARGIN,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Difference,
    Estimate,
    all_of,
    difference,
    equivalent,
    estimate,
    exceeds,
    interval90,
    not_above,
    one_sample,
    pairing_units,
    save_plot,
)

OWNERSHIP_TABLES = ("table4", "table16", "table17", "table18", "table19", "table20")
ROWS = {"victim": "watermarked victim (itself)", "independent": "independent encoder", "random": "random init",
        "supervised_victim": "supervised victim (itself)", "supervised_mse": "MSE copy of the supervised victim"}
LOSS_NAMES = {"mse": "MSE", "softnn": "SoftNN", "infonce": "InfoNCE"}


def ownership_records(records: list[dict]) -> dict:
    """{(table, scale): {row: {unit: record}}}, the unit being the seed (:func:`reports.stats.pairing_units`:
    ``seed@victim`` where a table holds several victims at one seed); the last record of a unit wins."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    records = [r for r in records if r.get("what") == "ownership" and r.get("table") in OWNERSHIP_TABLES]
    for r, unit in zip(records, pairing_units(records)):
        out[(r["table"], r.get("scale", "?"))][r["row"]][unit] = r
    return out


def _name(row: str) -> str:
    if row in ROWS:
        return ROWS[row]
    loss, _, rest = row.partition("_")
    return f"{LOSS_NAMES.get(loss, loss)} copy, {rest}" if rest else row


def _values(seeds: dict, test: str, key: str) -> list[float]:
    return [r["metrics"][test][key] for r in seeds.values()
            if test in r["metrics"] and r["metrics"][test].get(key) is not None]


def _est(seeds: dict, test: str, key: str, scale: float = 1.0) -> Estimate | None:
    return estimate([v * scale for v in _values(seeds, test, key)])


def _verdicts(seeds: dict, test: str) -> str:
    counts: dict = defaultdict(int)
    for r in seeds.values():
        if test in r["metrics"]:
            counts[r["metrics"][test]["verdict"]] += 1
    return ", ".join(f"{v} {n}/{len(seeds)}" for v, n in sorted(counts.items())) or "-"


def _ps(seeds: dict, test: str, key: str = "p") -> str:
    ps = [r["metrics"][test].get(key) for _, r in sorted(seeds.items()) if test in r["metrics"]]
    return " / ".join("-" if p is None else f"{p:.2g}" for p in ps) or "-"


def _fmt(e: Estimate | None, digits: int = 1) -> str:
    if e is None:
        return "-"
    hw = e.half_width
    return f"{e.mean:.{digits}f}" if hw is None else f"{e.mean:.{digits}f} ± {hw:.{digits}f}"


def _row_order(rows: dict) -> list[str]:
    first = [r for r in ("victim", "independent", "random", "supervised_victim", "supervised_mse") if r in rows]
    rest = sorted((r for r in rows if r not in first),
                  key=lambda r: (r.split("_")[0], int(r.split("_")[1]) if r.split("_")[1].isdigit() else 0, r))
    return first + rest


# ----------------------------------------------------------------------------- claims


def _by_unit(seeds: dict, test: str, key: str) -> dict:
    """{unit: one statistic of a row's records} (the seeds where the test recorded it)."""
    return {u: r["metrics"][test][key] for u, r in seeds.items()
            if test in r["metrics"] and r["metrics"][test].get(key) is not None}


def _wsr_claims(t4: dict) -> list[tuple[str, str, str]]:
    """Table 4: the independent encoder near chance, the victim far above it, each copy above it."""
    out = []
    ind_units = _by_unit(t4.get("independent", {}), "wsr", "wsr_suspect")
    ind = _est(t4.get("independent", {}), "wsr", "wsr_suspect")
    chance = one_sample(ind_units, 50.0)
    out.append((f"An independently trained encoder's WSR is near 50% (within ±{EQUIVALENCE_MARGIN:g} points: "
                f"equivalence)", equivalent(chance),
                f"independent {_fmt(ind)}%; minus 50: {chance} ({interval90(chance)}; {chance.how})"
                if chance else "no data"))
    vic = _est(t4.get("victim", {}), "wsr", "wsr_suspect")
    d = difference(_by_unit(t4.get("victim", {}), "wsr", "wsr_suspect"), ind_units)
    out.append(("The watermarked victim's WSR is far above the independent encoder's", exceeds(d),
                f"victim {_fmt(vic)}% vs independent {_fmt(ind)}%; victim − independent "
                + (f"{d} points ({d.how})" if d else "no data")))
    copies = {row: seeds for row, seeds in t4.items() if row not in ROWS}
    diffs = {row: difference(_by_unit(seeds, "wsr", "wsr_suspect"), ind_units) for row, seeds in sorted(copies.items())}
    significant = {row: sum(1 for r in seeds.values() if (r["metrics"].get("ttest", {}).get("p") or 1) < 0.05)
                   for row, seeds in copies.items()}
    hows = {d.how for d in diffs.values() if d}
    out.append(("Every stolen copy's WSR exceeds the independent encoder's (copy − independent over seeds; the "
                "per-seed t-tests, p < 0.05, beside)", all_of([exceeds(d) for d in diffs.values()]),
                "; ".join(f"{_name(r)}: {d or 'no data'} ({exceeds(d)}; t-test p < 0.05 in {significant[r]}/"
                          f"{len(copies[r])} seeds)" for r, d in diffs.items()) + f" ({'; '.join(sorted(hows))})"
                if copies else "no copies"))
    return out


def _cost_claim(probes: dict) -> list[tuple[str, str, str]]:
    """Table 4's probes: the watermark's cost in downstream accuracy, a one-sided equivalence."""
    plain, marked = probes.get("victim_plain", {}), probes.get("victim_watermarked", {})
    if not plain or not marked:
        return []
    column = next(iter(plain))
    cost = difference(plain[column], marked.get(column, {}))
    return [(f"The watermark costs the victim at most {EQUIVALENCE_MARGIN:g} points of downstream accuracy "
             "(one-sided equivalence on plain − watermarked)", not_above(cost),
             f"top-1 on {column}: plain {estimate(plain[column].values())} vs watermarked "
             f"{estimate(marked.get(column, {}).values())}; cost {cost} points "
             + (f"({interval90(cost)}; {cost.how})" if cost else ""))]


def ownership_claims(records: list[dict], data: dict, scale: str = "cpu") -> list[tuple[str, str, str]]:
    """The issue's acceptance claims, checked on Tables 4, 17, 18 and 20 at ``scale`` by the one rule
    (:mod:`reports.stats`; rows of a table share their seeds, so paired by seed)."""
    own = ownership_records(records)
    t4, t18 = own.get(("table4", scale), {}), own.get(("table18", scale), {})
    t17, t20 = own.get(("table17", scale), {}), own.get(("table20", scale), {})
    out = []
    if t4:
        out += _wsr_claims(t4)
        out += _cost_claim(data.get(("table4", scale), {}))
    if t18:
        rows = sorted(r for r in t18 if r.startswith("mse_"))
        diffs = [(row, difference(_by_unit(t18[row], "l2", "mean_d_independent"),
                                  _by_unit(t18[row], "l2", "mean_d_suspect"))) for row in rows]
        if rows:
            out.append(("An MSE-stolen copy is closer to the victim in l2 than an independent model",
                        all_of([exceeds(d) for _, d in diffs]),
                        "; ".join(f"{_name(row)} {_fmt(_est(t18[row], 'l2', 'mean_d_suspect'), 2)} vs independent "
                                  f"{_fmt(_est(t18[row], 'l2', 'mean_d_independent'), 2)}, independent − copy "
                                  f"{_fmt_diff(d)}; per-seed tests: {_verdicts(t18[row], 'l2')}" for row, d in diffs)))
    if t17:
        verdicts, evidence = [], []
        for loss in LOSS_NAMES:
            rot, std = t17.get(f"{loss}_rotation", {}), t17.get(f"{loss}_standard", {})
            diff = difference(_by_unit(rot, "wsr", "wsr_suspect"), _by_unit(std, "wsr", "wsr_suspect"))
            if diff is not None:
                verdicts.append(exceeds(diff))
                evidence.append(f"{LOSS_NAMES[loss]} {_fmt(_est(rot, 'wsr', 'wsr_suspect'))}% vs "
                                f"{_fmt(_est(std, 'wsr', 'wsr_suspect'))}% (gain {diff} points, {diff.how})")
        if verdicts:
            out.append(("Rotating the attacker's queries raises the copy's WSR (Table 17: +Rotation above Standard)",
                        all_of(verdicts), "; ".join(evidence)))
    if t20:
        out += _dataset_inference_claim(t20)
    return out


def _dataset_inference_claim(t20: dict) -> list[tuple[str, str, str]]:
    """Table 20: a count of what the per-seed test decided (the one kind of claim outside the rule)."""
    copies = {row: seeds for row, seeds in t20.items() if row not in ROWS}
    flagged = {row: sum(1 for r in seeds.values() if r["metrics"].get("private_public", {}).get("verdict")
                        == "stolen") for row, seeds in copies.items()}
    if not copies:
        return []
    verdict = HOLDS if not any(flagged.values()) else FAILS if all(
        k == len(copies[r]) for r, k in flagged.items()) else INCONCLUSIVE
    return [("Dataset inference (private vs public training data, Table 20) misses copies of an SSL encoder "
             "(counted over the per-seed test verdicts)", verdict,
             "; ".join(f"{_name(r)} flagged in {k}/{len(copies[r])} seeds" for r, k in sorted(flagged.items()))
             + f"; the independent encoder (trained on the same private data) in "
             f"{_verdicts(t20.get('independent', {}), 'private_public')}")]


def _fmt_diff(d: Difference | None, digits: int = 2) -> str:
    if d is None:
        return "-"
    hw = d.half_width
    return f"{d.mean:+.{digits}f}" + ("" if hw is None else f" ± {hw:.{digits}f}") + f" ({d.how})"


# ----------------------------------------------------------------------------- sections


def plot_wsr(rows: dict, path: Path, title: str) -> None:
    def draw(ax):
        for loss in LOSS_NAMES:
            pts = sorted((int(r.split("_")[1]), _est(seeds, "wsr", "wsr_suspect"))
                         for r, seeds in rows.items() if r.startswith(loss + "_") and r.split("_")[1].isdigit())
            pts = [(n, e) for n, e in pts if e is not None]
            if pts:
                ax.errorbar([n for n, _ in pts], [e.mean for _, e in pts],
                            yerr=[e.half_width or 0 for _, e in pts], marker="o", capsize=3, label=LOSS_NAMES[loss])
        for row, style in (("victim", "--"), ("independent", ":")):
            e = _est(rows.get(row, {}), "wsr", "wsr_suspect")
            if e is not None:
                ax.axhline(e.mean, linestyle=style, color="grey", label=ROWS[row])
        ax.set_xscale("log")
        ax.set_xlabel("queries")
        ax.set_ylabel("watermark success rate (%)")
        ax.set_title(title)
        ax.legend(fontsize=8)

    save_plot(path, draw)


def ownership_sections(records: list[dict], data: dict, paper: dict, out_dir: Path) -> list[str]:
    own = ownership_records(records)
    lines: list[str] = []
    if not own:
        return lines
    lines += _intro()
    for (table, scale), rows in sorted(own.items(), key=lambda kv: (OWNERSHIP_TABLES.index(kv[0][0]), kv[0][1])):
        ref = paper.get(table, {})
        order = _row_order(rows)
        lines += header(ref, table, scale, [r for r in records if r.get("table") == table
                                            and r.get("scale", "?") == scale], level="###")
        if table in ("table4", "table16", "table17"):
            lines += _wsr_table(table, rows, order, ref)
            if table == "table4":
                lines += _table4_notes(ref, data.get(("table4", scale), {}))
            if table == "table16":
                lines += _table16_plot(rows, ref, out_dir / f"{table}_{scale}_wsr.png", f"{table} ({scale})")
        elif table == "table18":
            lines += _distance_table(rows, order, ref)
        elif table == "table19":
            lines += _noise_ball_table(rows, order, ref)
        elif table == "table20":
            lines += _dataset_inference_table(rows, order, ref)
    return lines


def _intro() -> list[str]:
    """The section's heading and how to read its tables."""
    return ["", "## Ownership verification (Tables 4, 16-20)", "",
            "Mean ± 95% confidence interval over seeds; each seed has its own watermarked victim "
            "(`run.py --watermark True`), its independent encoder (the plain victim of the next seed) and its "
            "own copies; p values are listed per seed (seed 0 / 1 / 2), each from one t-test over the images "
            "of that seed. WSR uses the victim's training images, each rotated once into each half-turn "
            "(2 views per image). Verdicts at alpha = 0.05, counted over seeds. At `cpu` scale the victim is "
            "the width-8 ResNet18 on `mnistm5k` (3,000 training images), the out-of-distribution queries "
            "are `patches`, and query counts are 300-3,000 instead of 10K-70K."]


def _paper_wsr(table: str, row: str, ref: dict) -> str:
    """The paper's WSR for a copy's row: Table 16 by query count, Table 17 by query variant; else "-"."""
    loss, _, rest = row.partition("_")
    if table == "table16" and rest.isdigit():
        value = ref.get("wsr", {}).get(loss, {}).get(int(rest))
        return f"{value}" if value is not None else "-"
    if table == "table17":
        value = ref.get("wsr", {}).get(loss, {}).get(rest)
        return f"{value}" if value is not None else "-"
    return "-"


def _wsr_table(table: str, rows: dict, order: list[str], ref: dict) -> list[str]:
    """Tables 4, 16 and 17: the watermark success rate of each suspect and the t-test against the independent."""
    lines = ["| suspect | WSR, owner's predictor (%) | WSR, retrained predictor (%) | Δμ vs independent "
             "| p per seed | verdicts | paper |", "|---|---|---|---|---|---|---|"]
    for row in order:
        seeds = rows[row]
        lines.append(f"| {_name(row)} | {_fmt(_est(seeds, 'wsr', 'wsr_suspect'))} | "
                     f"{_fmt(_est(seeds, 'retrained', 'wsr_suspect'))} | "
                     f"{_fmt(_est(seeds, 'ttest', 'delta_mu'), 3)} | {_ps(seeds, 'ttest')} | "
                     f"{_verdicts(seeds, 'ttest')} | {_paper_wsr(table, row, ref)} |")
    return lines


def _table4_notes(ref: dict, probes: dict) -> list[str]:
    """Under Table 4: the paper's rows, and the watermark's cost in the victims' probe accuracy."""
    lines = ["", "Paper (Δμ, p, t): " + "; ".join(f"{k}: {v[0]}, {v[1]:.2g}, {v[2]}"
                                                  for k, v in ref.get("rows", {}).items())
             + ". Its independent encoder scores about 50%."]
    if probes.get("victim_plain") and probes.get("victim_watermarked"):
        column = next(iter(probes["victim_plain"]))
        lines += ["", f"The watermark's cost: linear-probe top-1 on {column}, plain victim "
                  f"{estimate(probes['victim_plain'][column].values())} vs watermarked victim "
                  f"{estimate(probes['victim_watermarked'].get(column, {}).values())} (same seeds)."]
    return lines


def _table16_plot(rows: dict, ref: dict, png: Path, name: str) -> list[str]:
    """Under Table 16: the plot of WSR by queries (written to ``png``) and the paper's numbers."""
    plot_wsr(rows, png, f"{name}: WSR of copies by queries (95% CI)")
    paper_wsr = ref.get("wsr", {})
    return ["", f"![WSR by queries]({png.name})", "",
            "Paper (MSE / SoftNN / InfoNCE, SVHN queries): " + "; ".join(
                f"{n // 1000}K {paper_wsr['mse'][n]}/{paper_wsr['softnn'][n]}/{paper_wsr['infonce'][n]}"
                for n in sorted(paper_wsr.get("mse", {})))]


def _distance_table(rows: dict, order: list[str], ref: dict) -> list[str]:
    """Table 18: mean l2 distance of each suspect's representations to the victim's."""
    lines = ["| suspect | mean l2 to the victim | independent's | random's | p per seed | verdicts | paper |",
             "|---|---|---|---|---|---|---|"]
    for row in order:
        seeds = rows[row]
        paper_cell = ref.get("distance", {}).get(row, "-")
        lines.append(f"| {_name(row)} | {_fmt(_est(seeds, 'l2', 'mean_d_suspect'), 2)} | "
                     f"{_fmt(_est(seeds, 'l2', 'mean_d_independent'), 2)} | "
                     f"{_fmt(_est(seeds, 'l2', 'mean_d_random'), 2)} | {_ps(seeds, 'l2')} | "
                     f"{_verdicts(seeds, 'l2')} | {paper_cell} |")
    return lines + ["", "The paper's rows are 9K and 50K CIFAR10 queries; ours are the copies of Table 4."]


def _noise_ball_table(rows: dict, order: list[str], ref: dict) -> list[str]:
    """Table 19: the noise-ball test (μσ of suspect, victim and random)."""
    lines = ["| suspect | μσ suspect | μσ victim | μσ random | p1 per seed | p2 per seed | verdicts |",
             "|---|---|---|---|---|---|---|"]
    for row in order:
        seeds = rows[row]
        lines.append(f"| {_name(row)} | {_fmt(_est(seeds, 'noise_ball', 'mu_sigma_suspect'), 4)} | "
                     f"{_fmt(_est(seeds, 'noise_ball', 'mu_sigma_victim'), 4)} | "
                     f"{_fmt(_est(seeds, 'noise_ball', 'mu_sigma_unrelated'), 4)} | "
                     f"{_ps(seeds, 'noise_ball', 'p1')} | {_ps(seeds, 'noise_ball', 'p2')} | "
                     f"{_verdicts(seeds, 'noise_ball')} |")
    return lines + ["", f"Paper: μσ victim {ref.get('victim')}, random {ref.get('random')} (p2 {ref.get('p2')}); "
                    "stolen (μσ, p1): " + "; ".join(f"{k} {v[0]}, {v[1]}" for k, v in ref.get("stolen", {}).items())]


def _dataset_inference_table(rows: dict, order: list[str], ref: dict) -> list[str]:
    """Table 20: dataset inference (public vs private training data) of each suspect and of the victim."""
    lines = ["| suspect | Δμ (public − private) | p per seed | victim's own Δμ | victim's p per seed "
             "| verdicts |", "|---|---|---|---|---|---|"]
    for row in order:
        seeds = rows[row]
        lines.append(f"| {_name(row)} | {_fmt(_est(seeds, 'private_public', 'delta_mu'), 4)} | "
                     f"{_ps(seeds, 'private_public')} | "
                     f"{_fmt(_est(seeds, 'private_public', 'delta_mu_victim'), 4)} | "
                     f"{_ps(seeds, 'private_public', 'p_victim')} | {_verdicts(seeds, 'private_public')} |")
    paper_rows = "; ".join(f"{k}: {v[0]}, {v[1]:.2g}" for k, v in ref.get("rows", {}).items())
    return lines + ["", "Paper (Δμ, p): " + paper_rows]
