"""What each REPORT.md table's own runs were, read from that table's records, never typed by hand.

The paper's setup (``docs/paper_results.yaml``: ``title`` names the table, ``paper`` its setup) is
printed only after "Paper:"; what *our* runs were is the "Ours" line below it, derived here from the
records of the table: seeds, probe test-set size, image size, query sets, queries, epochs, architecture
and width. A setting comes from, in order:

1. a record field (``queries``, ``epochs``, ``image_size``, ``n_test``, ...; ``stolen_with``);
2. ``model_config``: the evaluated model's training config, which evaluation records carry from now on
   (:func:`evaluation.cli.training_config`);
3. the name of the evaluated model's run directory, which ``scripts/tables.py`` (``run_name``) and
   ``engine.presets`` make from the run's flags (``..._q500_e50``, ``victim_<data>_<arch>_w<width>``);
   the caption says so ("by run-directory name"), since the name is a record of the flags given, not of
   the defaults a run used.

A setting none of these give is "not recorded". ``tests/test_captions.py`` checks every setting a caption
states against the records of its table.
"""
from __future__ import annotations

import re
from collections import defaultdict

from loss import SPECS

FIELD, NAME = "record", "name"  # where a setting was read: a record field (or model_config), a run-directory name

_QUERIES_IN_NAME = re.compile(r"_q(\d+)(?:_|/|$)")
_EPOCHS_IN_NAME = re.compile(r"_e(\d+)(?:_|/|$)")
_COPY_DIR = re.compile(r"(?:^|/)(?:steal|stealhead|stealsimsiam|sslextract)_[^/]*")
_VICTIM_NAME = re.compile(r"(?:victim|victimwm|supervised)_([a-z0-9]+)_(resnet\d+)_w(\d+)_s\d+")


def _model_path(r: dict) -> str:
    """The evaluated model's path: a probe's checkpoint, an ownership test's suspect, a study's run."""
    for key in ("checkpoint", "suspect", "run_dir"):
        value = r.get(key)
        if isinstance(value, str) and "/" in value:
            return value
    return ""


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _is_copy(r: dict) -> bool:
    """A stolen model (queries and epochs describe it); the victim and baselines have none."""
    return r.get("modeltype") == "stolen" or bool(_COPY_DIR.search(_model_path(r)))


def record_settings(r: dict) -> dict[str, tuple]:
    """{setting: (value, source)} of one record (source: :data:`FIELD` or :data:`NAME`)."""
    out: dict[str, tuple] = {}
    cfg = r.get("model_config") or {}
    stolen = r.get("stolen_with") or {}
    metrics = r.get("metrics") or {}
    if r.get("seed") is not None:
        out["seed"] = (str(r["seed"]), FIELD)
    n_test = metrics.get("n_test", r.get("n_test", r.get("n_private")))
    if _int(n_test):
        out["n_test"] = (_int(n_test), FIELD)
    if _int(r.get("image_size")):
        out["px"] = (_int(r["image_size"]), FIELD)
    elif _int(cfg.get("image_size")):
        out["px"] = (_int(cfg["image_size"]), FIELD)
    path = _model_path(r)
    if _is_copy(r) or r.get("queries") is not None:
        q = r.get("queries", r.get("num_queries", stolen.get("num_queries", cfg.get("num_queries"))))
        if _int(q):
            out["queries"] = (_int(q), FIELD)
        elif _QUERIES_IN_NAME.search(path):
            out["queries"] = (int(_QUERIES_IN_NAME.search(path).group(1)), NAME)
        e = r.get("epochs", cfg.get("epochs"))
        if _int(e):
            out["epochs"] = (_int(e), FIELD)
        elif _EPOCHS_IN_NAME.search(path):
            out["epochs"] = (int(_EPOCHS_IN_NAME.search(path).group(1)), NAME)
    if cfg.get("arch"):
        out["arch"] = (str(cfg["arch"]), FIELD)
        if cfg.get("width"):
            out["width"] = (int(cfg["width"]), FIELD)
    else:
        victim = _VICTIM_NAME.search(str(r.get("victim_checkpoint") or "") + " " + path)
        if victim:
            out["victim_data"], out["arch"], out["width"] = ((v, NAME) for v in (
                victim.group(1), victim.group(2), int(victim.group(3))))
    column = r.get("dataset_test")
    if column:
        out["column"] = (str(column), FIELD)
    return out


def table_settings(records: list[dict]) -> dict[str, dict]:
    """{setting: {value: {sources}}} over a table's records."""
    out: dict = defaultdict(lambda: defaultdict(set))
    for r in records:
        for key, (value, source) in record_settings(r).items():
            out[key][value].add(source)
    return {k: dict(v) for k, v in out.items()}


def row_settings(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{row: table_settings of that row's records}."""
    by_row: dict = defaultdict(list)
    for r in records:
        by_row[str(r.get("row"))].append(r)
    return {row: table_settings(recs) for row, recs in by_row.items()}


VARIES = {"n_test": "by column", "column": "", "seed": "", "victim_data": "by row"}


def _values(found: dict, key: str, fmt=str, named: bool = True) -> str | None:
    """'500' or '100, 300, 1,000 (by row)', with '(by run-directory name)' where no field gave it."""
    values = found.get(key)
    if not values:
        return None
    ordered = sorted(values)
    text = ", ".join(map(fmt, ordered))
    if len(ordered) > 1 and VARIES.get(key, "by row"):
        text += f" ({VARIES.get(key, 'by row')})"
    if named and _only_named(found, key):
        text += " (by run-directory name)"
    return text


def _only_named(found: dict, key: str) -> bool:
    return bool(found.get(key)) and all(sources == {NAME} for sources in found[key].values())


def _count(n: int) -> str:
    return f"{n:,}"


def epochs_by_queries(records: list[dict]) -> list[tuple[int, int]] | None:
    """[(queries, epochs)] of the copies, where both are known; None where epochs are not."""
    pairs = set()
    for r in records:
        s = record_settings(r)
        if "queries" in s and "epochs" in s:
            pairs.add((s["queries"][0], s["epochs"][0]))
    return sorted(pairs) or None


def ours_line(table: str, scale: str, records: list[dict]) -> str:
    """The caption of our runs of ``table`` at ``scale``: every setting read from its records, the
    settings a stolen copy has but no record gives named as "not recorded"."""
    found = table_settings(records)
    parts = []
    seeds = found.get("seed", {})
    parts.append(f"{len(seeds)} seed(s) ({_values(found, 'seed')})" if seeds else "seeds not recorded")
    n_test = _values(found, "n_test", _count)
    parts.append(f"test set {n_test} images" if n_test else "test-set size not recorded")
    px = _values(found, "px")
    parts.append(f"images {px} px" if px else "image size not recorded")
    copies = [r for r in records if _is_copy(r)]
    for key in ("queries", "epochs") if copies else ():
        value = _values(found, key, _count)
        missing = sum(key not in record_settings(r) for r in copies)
        if not value:
            parts.append(f"{key} not recorded")
        else:
            parts.append(f"{key} {value}" + (f"; {key} not recorded for {missing} of {len(copies)} records of copies"
                                              if missing else ""))
    arch, width, data = (_values(found, k, named=False) for k in ("arch", "width", "victim_data"))
    if arch:
        parts.append(f"victim architecture {arch}" + (f", width {width}" if width else "")
                     + (f", trained on {data}" if data else "")
                     + (" (by run-directory name)" if _only_named(found, "arch") else ""))
    else:
        parts.append("architecture not recorded")
    columns = _values(found, "column")
    if columns:
        parts.append(f"probed on {columns.replace(' (per row)', '')}")
    return f"Ours, from the `{table}` records at `{scale}` scale: " + "; ".join(parts) + "."


def epochs_note(records: list[dict]) -> str | None:
    """Where epochs vary along a query sweep: each query count's epochs and the product (image-steps)."""
    pairs = epochs_by_queries(records)
    if not pairs or len({q for q, _ in pairs}) < 2:
        return None
    steps = sorted({q * e for q, e in pairs})
    span = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"
    return (f"Epochs fall as queries rise (queries × epochs = {span} image-steps per copy): "
            + ", ".join(f"{q:,} queries × {e} epochs" for q, e in pairs)
            + "; a query count not listed here has no recorded epoch count (the attack's default).")


def labels_note(records: list[dict]) -> str | None:
    """A footnote for the rows whose loss uses the true class labels (``loss.SPECS[...].labels``)."""
    rows = sorted({str(r.get("row")) for r in records
                   if str(r.get("row")).split("_")[0] in SPECS and SPECS[str(r.get("row")).split("_")[0]].labels})
    if not rows:
        return None
    return (f"{', '.join(f'`{row}`' for row in rows)} (SupCon*): trained with the true class labels of the queries "
            "(`loss.SPECS[...].labels`), i.e. an attacker that has labels; not comparable to the label-free losses.")


def header(ref: dict, table: str, scale: str, records: list[dict], level: str = "##") -> list[str]:
    """A section's heading, the paper's setup after "Paper:" and our runs' caption from the records."""
    lines = ["", f"{level} {ref.get('title', table)} — ours at `{scale}` scale", ""]
    if ref.get("paper"):
        lines += [f"Paper: {ref['paper']}.", ""]
    lines += [ours_line(table, scale, records), ""]
    for note in (epochs_note(records), labels_note(records)):
        if note:
            lines += [note, ""]
    return lines


def query_set_note(records: list[dict]) -> str | None:
    """Table 3: records whose ``stolen_with.datasetsteal`` disagrees with the row's ``query_set`` (written
    before linsimsiam.py named ``--useval`` runs ``imagenetval``); the report reads the row's query set."""
    stale = sorted({r["row"] for r in records if r.get("query_set") and (r.get("stolen_with") or {}).get(
        "datasetsteal", r["query_set"]) != r["query_set"]})
    if not stale:
        return None
    return (f"Query sets are read from each row's `query_set` (its name): the records of {', '.join(stale)} say "
            "`stolen_with.datasetsteal: imagenet`, because they were written before the probe named an "
            "`--useval True` run's query set `imagenetval`.")
