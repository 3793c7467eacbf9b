"""No REPORT.md caption states a setting of our runs that no record of its table has (issue 27).

Each section's caption (its heading and the lines above its first table or figure, less the "Paper:" line
that quotes the paper's setup) is scanned for settings with their units: queries (``9,000 ... queries``,
``50K queries``), ``px``, epochs, seeds, the probe's test-set size, ResNet architectures and widths. Each
must be a value that the records of the section's table carry (:func:`reports.captions.record_settings`:
a record field, ``model_config``, or the evaluated run's directory name)."""
import re
from collections import defaultdict
from pathlib import Path

import pytest

from reports.captions import table_settings
from utils import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

OURS = re.compile(r"Ours, from the `(\w+)` records at `(\w+)` scale")
TABLE_IN_HEADING = re.compile(r"^#+ Tables? (\d+)(?:-(\d+))?")
NUMBER = r"(?<![\w.])(\d[\d,]*K?)"
PATTERNS = {  # setting -> pattern of a stated value
    "queries": re.compile(NUMBER + r"(?: [A-Za-z0-9]+){0,3} queries"),
    "px": re.compile(NUMBER + r" ?px"),
    "epochs": re.compile(NUMBER + r" epochs"),
    "seeds": re.compile(NUMBER + r" seed(?:\(s\)|s)"),
    "n_test": re.compile(r"test set (?:of )?" + NUMBER),
    "arch": re.compile(r"(resnet\d+|resnext-?\d+)", re.IGNORECASE),
    "width": re.compile(r"width[- ]" + NUMBER),
}


def _value(text: str):
    text = text.replace(",", "")
    return int(text[:-1]) * 1000 if text.endswith("K") else (int(text) if text.isdigit() else text.lower())


def records_by_table(results: Path = RESULTS) -> dict:
    by: dict = defaultdict(list)
    for path in sorted(results.glob("*.jsonl")):
        for r in read_jsonl(path):
            by[(r.get("table"), r.get("scale", "?"))].append(r)
    return by


def sections(report: str):
    """(heading, caption lines) per section: the lines before its first table or figure."""
    out, heading, caption, done = [], None, [], False
    for line in report.splitlines():
        if line.startswith("#"):
            if heading:
                out.append((heading, caption))
            heading, caption, done = line, [], False
        elif heading and not done:
            if line.startswith(("|", "![")):
                done = True
            elif line.strip() and not line.startswith("Paper:"):
                caption.append(line)
    if heading:
        out.append((heading, caption))
    return out


def table_of(heading: str, caption: list[str]) -> tuple[str, str] | None:
    for line in caption:
        m = OURS.search(line)
        if m:
            return m.group(1), m.group(2)
    m = TABLE_IN_HEADING.match(heading)
    if m:  # an old caption without its "Ours" line: "Tables 6-7" are table7's records
        scale = re.search(r"ours at `(\w+)` scale", heading)
        return f"table{m.group(2) or m.group(1)}", scale.group(1) if scale else "cpu"
    return None


def allowed(records: list[dict]) -> dict[str, set]:
    found = table_settings(records)
    out = {key: set(found.get(key, {})) for key in ("queries", "px", "epochs", "n_test", "width")}
    out["seeds"] = {len(found.get("seed", {}))}
    out["arch"] = {str(a).lower() for a in found.get("arch", {})}
    return out


def violations(report: str, by_table: dict) -> list[str]:
    """Every stated setting of a captioned table that none of its records has."""
    bad = []
    for heading, caption in sections(report):
        key = table_of(heading, caption)
        if key is None or key not in by_table:
            continue
        ok = allowed(by_table[key])
        # a sweep's epochs note lists "N queries × E epochs": both are checked by the patterns
        text = " ".join([re.sub(r"\(paper:[^)]*\)", "", heading)] + caption)
        for setting, pattern in PATTERNS.items():
            for m in pattern.finditer(text):
                value = _value(m.group(1))
                if value not in ok[setting]:
                    bad.append(f"{key[0]}: {setting} {m.group(0)!r} (records: {sorted(ok[setting]) or 'none'})")
    return bad


@pytest.fixture(scope="module")
def by_table():
    return records_by_table()


def test_no_caption_states_a_setting_its_records_lack(by_table):
    assert violations((RESULTS / "REPORT.md").read_text(), by_table) == []


def test_every_paper_table_section_has_a_caption_from_its_records():
    report = (RESULTS / "REPORT.md").read_text()
    missing = [h for h, caption in sections(report) if TABLE_IN_HEADING.match(h)
               and not any(OURS.search(line) for line in caption)]
    assert missing == []


@pytest.mark.parametrize("old", [
    "## Table 1: attack methods (CIFAR10 victim, 9,000 queries from the CIFAR10 test set) — ours at `cpu` scale",
    "## Table 2: loss functions (CIFAR10 victim, 9,000 CIFAR10 test queries; * two augmented views) — ours at `cpu` "
    "scale",
    "## Table 5: losses against an SVHN victim (9,000 SVHN test queries) — ours at `cpu` scale",
    "## Table 3: ImageNet SimSiam ResNet50 victim, stolen at 224 px (stealsimsiam.py; probe linsimsiam.py) — ours at "
    "`cpu` scale",
    "### Table 17: watermark success rate (%) by the augmentation of the attacker's CIFAR10 queries (50K queries) — "
    "ours at `cpu` scale",
])
def test_the_old_captions_fail(by_table, old):
    """The headings REPORT.md had before (the paper's setup as if it were ours) are caught."""
    assert violations(old + "\n\n3 seed(s); probe test set of 1,000 images.\n\n| a |\n", by_table)


def test_a_caption_with_the_records_values_passes(by_table):
    ok = ("## Table 1: attack methods — ours at `cpu` scale\n\nPaper: CIFAR10 victim, 9,000 queries.\n\n"
          "3 seed(s); 500 queries; 28 px; test set of 1,000 images; resnet18, width 8.\n\n| a |\n")
    assert violations(ok, by_table) == []
