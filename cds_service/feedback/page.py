"""The admin report as one self-contained HTML page: charts drawn server-side as inline SVG, no script,
no external resource, so it renders the same behind any firewall. Counts only, never patient data.

Who may see it is decided in web/admin.py.
"""
from __future__ import annotations

from html import escape

from .analytics import Report, RuleFigures, per_mille, percent, shadow_table, week_table
from .charts import Bar, bar_columns, bar_rows, svg

HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
           "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
OVERRIDE_COLOUR = "#c0392b"
WEEK_COLOUR = "#2e6da4"  # live cards
SILENT_COLOUR = "#9aa5b1"  # silent cards: rules in shadow mode
STYLE = """body { font-family: sans-serif; margin: 2em; color: #222; background: #fff; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td.n { text-align: right; }
td:first-child, th { white-space: nowrap; }
svg text { font-family: sans-serif; font-size: 12px; fill: #222; }
.key { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }"""


def render(report: Report) -> str:
    period = f"{report.period.since:%Y-%m-%d %H:%M} to {report.period.until:%Y-%m-%d %H:%M} UTC"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cd20-cds: card feedback</title>
<style>
{STYLE}
</style></head>
<body>
<h1>Card feedback and overrides</h1>
<p>From {escape(period)}. A card's fate is its latest feedback;
override rate = overridden / (accepted + overridden).</p>
<h2>Override rate per rule</h2>
{_rate_chart(report)}
<h2>Live and silent cards per 1,000 calls</h2>
<p>{key("live: shown", WEEK_COLOUR)}{key("silent: rules in shadow mode, recorded and never shown", SILENT_COLOUR)}
<br>Counted against the calls to the services that issued the rule's cards.</p>
{_per_1000_chart(report)}
<h2>Cards per week</h2>
{_week_chart(report)}
<h2>Per rule and indicator</h2>
{_table(report.shown)}
<h2>Live and silent cards per rule</h2>
{table(*shadow_table(report), range(2, 7))}
<h2>Per week</h2>
{table(*week_table(report), range(1, 4))}
</body></html>
"""


def key(text: str, colour: str) -> str:
    return f'<span class="key" style="background: {colour}"></span>{escape(text)}'


def _rate_chart(report: Report) -> str:
    rates = report.override_rate_by_rule()
    if not rates:
        return "<p>No cards and no feedback in this period.</p>"
    label_width, bar_width, row = 220, 400, 26
    parts = []
    for i, (rule, rate, acted) in enumerate(rates):
        y = 10 + i * row
        parts.append(f'<text x="0" y="{y + 15}">{escape(rule)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y}" width="{bar_width}" height="20" fill="#eee"/>')
        if rate is None:
            parts.append(f'<text x="{label_width + 8}" y="{y + 15}">no feedback</text>')
            continue
        parts.append(f'<rect class="bar" x="{label_width}" y="{y}" width="{rate * bar_width:.1f}" height="20" '
                     f'fill="{OVERRIDE_COLOUR}"><title>{escape(rule)}: {percent(rate)}</title></rect>')
        parts.append(f'<text x="{label_width + bar_width + 8}" y="{y + 15}">{percent(rate)} of {acted}</text>')
    height = 20 + len(rates) * row
    return svg("override-rates", "Override rate per rule", height, parts)


def _per_1000_chart(report: Report) -> str:
    carded = [f for f in report.carded if f.calls]
    if not carded:
        return "<p>No cards issued in this period.</p>"
    labelled = []
    for f in carded:
        live, silent = f.per_1000(f.issued) or 0, f.per_1000(f.silent) or 0
        name = f"{f.rule_id} ({f.indicator})"
        labelled.append((name, [Bar(live, WEEK_COLOUR, f"{name}: {live:.1f} live per 1,000 calls"),
                                Bar(silent, SILENT_COLOUR, f"{name}: {silent:.1f} silent per 1,000 calls", "bar silent")],
                         f"{per_mille(live)} / {per_mille(silent)}"))
    top = max(max(bar.value for _, bars, _ in labelled for bar in bars), 1)
    return bar_rows("cards-per-1000", "Live and silent cards per 1,000 calls", labelled, top)


def _week_chart(report: Report) -> str:
    weeks = report.weeks
    top = max((max(w.live, w.silent) for w in weeks), default=0)
    if not top:
        return "<p>No cards issued in this period.</p>"
    any_silent = any(w.silent for w in weeks)
    groups = []
    for week in weeks:
        bars = [Bar(week.live, WEEK_COLOUR, f"week of {week.monday}: {week.live}")]
        if any_silent:
            bars.append(Bar(week.silent, SILENT_COLOUR, f"week of {week.monday}: {week.silent} silent", "bar silent"))
        groups.append((f"{week.monday:%m-%d}", bars))
    return bar_columns("cards-per-week", "Cards issued per week", groups, top)


def _table(rules: list[RuleFigures]) -> str:
    head = ("<tr><th>rule</th><th>indicator</th><th>issued</th><th>feedback</th><th>accepted</th>"
            "<th>overridden</th><th>override rate</th><th>top override reasons</th></tr>")
    rows = [f"<tr><td>{escape(f.rule_id)}</td><td>{escape(f.indicator)}</td><td class=n>{f.issued}</td>"
             f"<td class=n>{f.feedback}</td><td class=n>{f.accepted}</td><td class=n>{f.overridden}</td>"
             f"<td class=n>{percent(f.override_rate)}</td>"
             f"<td>{escape(', '.join(f'{r} ({n})' for r, n in f.top_reasons())) or '-'}</td></tr>" for f in rules]
    return f"<table>{head}{''.join(rows)}</table>"


def table(heads: tuple[str, ...], lines: list[tuple[str, ...]], numeric: range) -> str:
    """A plain HTML table of text cells; numeric columns right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td class=n>{escape(c)}</td>" if i in numeric else f"<td>{escape(c)}</td>"
                                    for i, c in enumerate(line)) + "</tr>" for line in lines)
    return f"<table><tr>{head}</tr>{body}</table>"
