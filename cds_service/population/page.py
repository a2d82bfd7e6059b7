"""report.html: a replay's figures as one self-contained page (inline SVG, no script, no external
resource), readable offline. Counts only, never patient data."""
from __future__ import annotations

from html import escape
from typing import Any

from ..feedback.charts import Bar, bar_columns, bar_rows
from ..feedback.page import SILENT_COLOUR, STYLE, key, table
from .summary import input_notes

INDICATOR_COLOURS = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2e6da4"}
NO_CARD_COLOUR = "#7f8c8d"
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def render(summary: dict[str, Any]) -> str:
    patients = summary["patients"]
    what = f"{escape(summary['product'])} ordered ({escape(summary['hook'])})" if summary["product"] else escape(summary["hook"])
    keys = "".join(key(name, colour) for name, colour in INDICATOR_COLOURS.items())
    if any(r["silent"] for r in summary["rules"]):
        keys += key("silent (shadow mode)", SILENT_COLOUR)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>cd20-cds: population replay</title>
<style>
{STYLE}
</style></head>
<body>
<h1>Population replay: alert burden per rule</h1>
<p>{escape(summary['export'])}: {what} on {escape(summary['at'])}, evaluated by the service's own code path for
every patient of the export. {patients['answered']} calls answered ({patients['in_export']} patients in the export,
{patients['refused']} refused); {patients['no_card']} calls ({patients['no_card_per_1000']:.1f} per 1,000) showed no
card at all.</p>
<h2>Cards per 1,000 patients, by rule and indicator</h2>
<p>{keys}</p>
{_rule_chart(summary)}
<h2>Cards per patient</h2>
{_per_patient_chart(summary)}
<h2>Per rule and indicator</h2>
{table(("rule", "indicator", "shown", "patients", "per 1,000"), _rows(summary), range(3, 5))}
<h2>The export</h2>
<ul>{"".join(f"<li>{escape(note)}</li>" for note in input_notes(summary))}</ul>
</body></html>
"""


def _rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = [(r["rule"], r["indicator"], "silent" if r["silent"] else "live", str(r["patients"]), f"{r['per_1000']:.1f}")
            for r in summary["rules"]]
    patients = summary["patients"]
    return rows + [("(no card at all)", "", "", str(patients["no_card"]), f"{patients['no_card_per_1000']:.1f}")]


def _rule_chart(summary: dict[str, Any]) -> str:
    if not summary["rules"]:
        return "<p>No patient got a card.</p>"
    labelled = []
    for r in summary["rules"]:
        name = f"{r['rule']} ({r['indicator']}{', silent' if r['silent'] else ''})"
        colour = SILENT_COLOUR if r["silent"] else INDICATOR_COLOURS.get(r["indicator"], NO_CARD_COLOUR)
        labelled.append((name, [Bar(r["per_1000"], colour, f"{name}: {r['per_1000']:.1f} per 1,000")],
                         f"{r['per_1000']:.1f}"))
    top = max(r["per_1000"] for r in summary["rules"]) or 1
    return bar_rows("cards-per-1000", "Cards per 1,000 patients by rule and indicator", labelled, top)


def _per_patient_chart(summary: dict[str, Any]) -> str:
    counts = {int(n): count for n, count in summary["cards_per_patient"].items()}
    if not counts:
        return "<p>No call was answered.</p>"
    groups = [(str(n), [Bar(counts.get(n, 0), NO_CARD_COLOUR if n == 0 else INDICATOR_COLOURS["info"],
                            f"{counts.get(n, 0)} patients with {n} card(s)")]) for n in range(max(counts) + 1)]
    return bar_columns("cards-per-patient", "Patients by the number of cards their call showed", groups,
                       max(counts.values()))
