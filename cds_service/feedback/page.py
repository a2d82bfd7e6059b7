"""The admin report as one self-contained HTML page: charts drawn server-side as inline SVG, no script,
no external resource, so it renders the same behind any firewall. Counts only, never patient data.

Who may see it is decided in admin.py.
"""
from __future__ import annotations

from html import escape

from .analytics import Report, RuleFigures, percent

HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
           "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
OVERRIDE_COLOUR = "#c0392b"
WEEK_COLOUR = "#2e6da4"
WIDTH = 760


def render(report: Report) -> str:
    period = f"{report.period.since:%Y-%m-%d %H:%M} to {report.period.until:%Y-%m-%d %H:%M} UTC"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cd20-cds: card feedback</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }}
td.n {{ text-align: right; }}
td:first-child, th {{ white-space: nowrap; }}
svg text {{ font-family: sans-serif; font-size: 12px; fill: #222; }}
</style></head>
<body>
<h1>Card feedback and overrides</h1>
<p>From {escape(period)}. A card's fate is its latest feedback;
override rate = overridden / (accepted + overridden).</p>
<h2>Override rate per rule</h2>
{_rate_chart(report)}
<h2>Cards issued per week</h2>
{_week_chart(report)}
<h2>Per rule and indicator</h2>
{_table(report.rules)}
</body></html>
"""


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
    return _svg("override-rates", "Override rate per rule", height, parts)


def _week_chart(report: Report) -> str:
    weeks = report.weeks
    top = max((count for _, count in weeks), default=0)
    if not top:
        return "<p>No cards issued in this period.</p>"
    left, plot_width, plot_height, base = 50, WIDTH - 60, 180, 200
    step = plot_width / len(weeks)
    label_every = max(1, round(len(weeks) / 12))
    parts = [f'<text x="0" y="{base - plot_height + 4}">{top}</text>', f'<text x="0" y="{base}">0</text>',
             f'<line x1="{left}" y1="{base}" x2="{left + plot_width}" y2="{base}" stroke="#999"/>']
    for i, (monday, count) in enumerate(weeks):
        x = left + i * step
        height = count / top * plot_height
        parts.append(f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{base - height:.1f}" width="{step * 0.8:.1f}" '
                     f'height="{height:.1f}" fill="{WEEK_COLOUR}"><title>week of {monday}: {count}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{base + 16}">{monday:%m-%d}</text>')
    return _svg("cards-per-week", "Cards issued per week", base + 30, parts)


def _svg(name: str, title: str, height: int, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (f'<svg class="chart" id="{name}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{title}"><title>{title}</title>\n{body}\n</svg>')


def _table(rules: list[RuleFigures]) -> str:
    head = ("<tr><th>rule</th><th>indicator</th><th>issued</th><th>feedback</th><th>accepted</th>"
            "<th>overridden</th><th>override rate</th><th>top override reasons</th></tr>")
    rows = [f"<tr><td>{escape(f.rule_id)}</td><td>{escape(f.indicator)}</td><td class=n>{f.issued}</td>"
            f"<td class=n>{f.feedback}</td><td class=n>{f.accepted}</td><td class=n>{f.overridden}</td>"
            f"<td class=n>{percent(f.override_rate)}</td>"
            f"<td>{escape(', '.join(f'{r} ({n})' for r, n in f.top_reasons())) or '-'}</td></tr>" for f in rules]
    return f"<table>{head}{''.join(rows)}</table>"
