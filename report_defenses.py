"""The defenses part of results/REPORT.md (Tables 10-15, proof of work, prediction poisoning).

Called by ``report.py``; reads the same records (``results/<table>_<scale>.jsonl``, written by
``scripts/tables.py``) and the paper's numbers. Accuracies are mean ± 95% CI over seeds; a
claim compares per-seed differences (paired: the legitimate user and the adversary of one
seed face the same victim).
"""
from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

from report import FAILS, HOLDS, INCONCLUSIVE, Estimate, _save_plot, estimate

NOISE_TABLES = ("table10", "table11", "table12", "poison")


def _value(column: str) -> float:
    m = re.search(r"=([-\d.]+)$", column)
    return float(m.group(1)) if m else 0.0


def _paper_cell(ref: dict, row: str, column: str):
    values = ref.get(row, {})
    if " " in column:  # "cosine sigma=20"
        values = values.get(column.split()[0], {})
    v = values.get(_value(column)) if isinstance(values, dict) else None
    if v is None and isinstance(values, dict):
        v = values.get(int(_value(column))) if _value(column).is_integer() else None
    return v


def _drop_difference(rows: dict, column: str, base: str) -> Estimate | None:
    """Per seed: (adversary's drop) - (legitimate user's drop) from the undefended column ``base``."""
    adv, leg = rows.get("adversary", {}), rows.get("legitimate", {})
    seeds = sorted(set(adv.get(column, {})) & set(adv.get(base, {})) & set(leg.get(column, {}))
                   & set(leg.get(base, {})))
    return estimate([(adv[base][s] - adv[column][s]) - (leg[base][s] - leg[column][s]) for s in seeds])


def _verdict(e: Estimate | None) -> str:
    if e is None or e.half_width is None:
        return INCONCLUSIVE
    if e.mean - e.half_width > 0:
        return HOLDS
    if e.mean + e.half_width < 0:
        return FAILS
    return INCONCLUSIVE


def noise_claims(data: dict) -> list[tuple[str, str, str]]:
    """The paper's claims on serving-side noise, checked on the largest noise of each table."""
    out = []
    for table, what in (("table10", "mean-shifted noise (mean 10)"), ("table11", "zero-mean noise"),
                        ("table12", "detection + noise (cosine)"), ("poison", "prediction poisoning")):
        for (t, scale), rows in data.items():
            if t != table or "adversary" not in rows:
                continue
            columns = sorted(rows["adversary"], key=_value)
            if table == "table12":
                columns = [c for c in columns if c.startswith("cosine")]
            if len(columns) < 2:
                continue
            base, top = columns[0], columns[-1]
            e = _drop_difference(rows, top, base)
            claim = f"{what} hurts the adversary more than the legitimate user ({scale}, {top} vs {base})"
            evidence = (f"adversary's drop minus the legitimate user's: {e} points over {e.n} seeds" if e else "no data")
            out.append((claim, _verdict(e), evidence))
    return out


def _accuracy_table(table: str, scale: str, rows: dict, ref: dict) -> list[str]:
    columns = sorted({c for r in rows.values() for c in r}, key=lambda c: (c.split()[0] if " " in c else "", _value(c)))
    lines = ["| column | legitimate user | adversary (stolen + linear probe) | paper legitimate / adversary |",
             "|---|---|---|---|"]
    for c in columns:
        leg = estimate(rows.get("legitimate", {}).get(c, {}).values())
        adv = estimate(rows.get("adversary", {}).get(c, {}).values())
        p_leg, p_adv = _paper_cell(ref, "legitimate", c), _paper_cell(ref, "adversary", c)
        paper = f"{p_leg} / {p_adv}" if p_leg is not None else "-"
        lines.append(f"| {c} | {leg or '-'} | {adv or '-'} | {paper} |")
    return lines


def plot_tradeoff(records: list[dict], paper: dict, path: Path) -> None:
    """False positive vs false negative rate by threshold, one curve per metric/output."""
    curves = defaultdict(list)
    for r in records:
        m = r["metrics"]
        curves[f"{m['metric']} {m['on']}"].append((m["threshold"], m["fp_mean"], m["fn_mean"]))

    def draw(ax):
        for name, pts in sorted(curves.items()):
            by_t = defaultdict(list)
            for t, fp, fn in pts:
                by_t[t].append((fp, fn))
            xs = sorted(by_t)
            fps = [statistics.mean(p[0] for p in by_t[t]) for t in xs]
            fns = [statistics.mean(p[1] for p in by_t[t]) for t in xs]
            ax.plot(fps, fns, "o-", label=f"ours: {name}")
            for t, x, y in zip(xs, fps, fns):
                ax.annotate(f"{t:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, by_t in (paper or {}).items():
            pts = sorted(by_t.items())
            ax.plot([v[0] for _, v in pts], [v[2] for _, v in pts], "x--", alpha=0.6, label=f"paper: {name}")
        ax.set_xlabel("false positive rate % (distinct images flagged)")
        ax.set_ylabel("false negative rate % (augmented views missed)")
        ax.set_title("similar-query detection: the threshold trade-off")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    _save_plot(path, draw, size=(6.5, 4.5))


def detection_lines(records: list[dict], ref: dict, scale: str, out_dir: Path) -> list[str]:
    png = out_dir / f"table13_{scale}_tradeoff.png"
    plot_tradeoff(records, ref.get("rates"), png)
    groups = defaultdict(list)
    for r in records:
        m = r["metrics"]
        groups[(m["metric"], m["on"], m["threshold"])].append(m)
    seeds = len({r.get("seed") for r in records})
    n = sorted({m["n"] for ms in groups.values() for m in ms})
    draws = sorted({m["draws"] for ms in groups.values() for m in ms})
    lines = [f"![detection trade-off]({png.name})", "",
             f"{seeds} victim(s) (seeds), {', '.join(map(str, draws))} draws of {', '.join(map(str, n))} distinct "
             "query-pool images each; the mean over victims of each victim's mean over its draws ± the standard "
             "deviation across victims (one victim: across its draws). False positive: a distinct image flagged against the earlier ones; false negative: an "
             "augmented view (the attacker's cpu views: crops of at least 80% of the area, colour jitter) of an "
             "image already sent, not flagged.", "",
             "| metric | watched | threshold | false positive % | false negative % |", "|---|---|---|---|---|"]
    for (metric, on, t), ms in sorted(groups.items()):
        fp = [m["fp_mean"] for m in ms]
        fn = [m["fn_mean"] for m in ms]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else ms[0]["fp_std"])
        lines.append(f"| {metric} | {on} | {t:g} | {statistics.mean(fp):.1f} ± {sd(fp):.1f} | "
                     f"{statistics.mean(fn):.1f} ± {sd(fn):.1f} |")
    lines += ["", "Paper (ResNet18 CIFAR10 victim): " + "; ".join(
        f"{name}: " + ", ".join(f"τ={t:g} {v[0]}/{v[2]}" for t, v in sorted(by_t.items()))
        for name, by_t in (ref.get("rates") or {}).items())]
    return lines


def pow_lines(records: list[dict], bench: list[dict]) -> list[str]:
    lines = []
    if bench:
        lines += ["Measured solve time by puzzle bits k (`bench/pow_bench.py`, pure-Python SHA-256 on one core):", "",
                  "| k | expected hashes 2^k | mean hashes | mean solve s | hashes/s |", "|---|---|---|---|---|"]
        for r in sorted(bench, key=lambda r: r["config"]["bits"]):
            m = r["metrics"]
            lines.append(f"| {r['config']['bits']} | {m['expected_hashes']:.0f} | {m['hashes_mean']:.0f} | "
                         f"{m['solve_s_mean']:.4f} | {m['hashes_per_s']:,.0f} |")
        lines.append("")
    groups = defaultdict(list)
    for r in records:
        m = r["metrics"]
        groups[(m["bits_min"], m["bits_max"], m["role"])].append(m)
    if groups:
        lines += ["Cost of the same number of queries for each customer (one PoW service per customer; "
                  "difficulty k + round(log2 batch) bits per batch, k from the deviation score):", "",
                  "| bits min-max | customer | deviation score | expected hashes | × legitimate | solve s |",
                  "|---|---|---|---|---|---|"]
        order = {"legitimate": 0, "attacker_1view": 1, "attacker_2views": 2}
        for (lo, hi, role), ms in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9))):
            lines.append(f"| {lo}-{hi} | {role} | {statistics.mean(m['deviation_score'] for m in ms):.2f} | "
                         f"{statistics.mean(m['expected_hashes'] for m in ms):.3g} | "
                         f"{statistics.mean(m['cost_ratio_vs_legitimate'] for m in ms):.1f} | "
                         f"{statistics.mean(m['solve_seconds'] for m in ms):.3f} |")
        lines += ["", "A single-view attacker (MSE) sends distinct images, as a legitimate user does, so it pays "
                  "the same: the calibration only prices repetition (the two-view attacker's score is at most "
                  "0.5, since each image's first view is new)."]
    return lines


def defense_sections(records: list[dict], data: dict, paper: dict, out_dir: Path) -> list[str]:
    """Markdown for every defense table present in the records."""
    lines: list[str] = []
    for table in ("table10", "table11", "table12", "poison"):
        for (t, scale), rows in sorted(data.items()):
            if t != table:
                continue
            ref = paper.get(table, {})
            seeds = max((len(s) for r in rows.values() for s in r.values()), default=0)
            lines += ["", f"## {ref.get('title', table)} — ours at `{scale}` scale", "",
                      f"{seeds} seed(s); legitimate user and adversary tested on the 1,000 held-out images "
                      "(at cpu scale: 1,000 queries each, the whole query pool).", ""]
            lines += _accuracy_table(table, scale, rows, ref)
    by = defaultdict(list)
    for r in records:
        if r.get("table") in ("table13", "pow") and "metrics" in r and "config" not in r:
            by[(r["table"], r.get("scale", "?"))].append(r)
    for (table, scale), recs in sorted(by.items()):
        ref = paper.get(table, {})
        lines += ["", f"## {ref.get('title', table)} — ours at `{scale}` scale", ""]
        if table == "table13":
            lines += detection_lines(recs, ref, scale, out_dir)
        else:
            bench = [r for r in records if r.get("table") == "pow" and "config" in r and r.get("scale", scale) == scale]
            lines += pow_lines([r for r in recs if "role" in r["metrics"]], bench)
    return lines
