"""Bar charts as inline SVG, drawn server-side: no script and no external resource, so a page renders the
same offline and behind any firewall (the admin report, the population replay report)."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH = 760


@dataclass(frozen=True)
class Bar:
    value: float
    colour: str
    title: str  # the tooltip: what the bar is, with its figure
    css: str = "bar"


def svg(name: str, title: str, height: float, parts: list[str], width: int = WIDTH) -> str:
    body = "\n".join(parts)
    return (f'<svg class="chart" id="{name}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:g}" '
            f'viewBox="0 0 {width} {height:g}" role="img" aria-label="{title}"><title>{title}</title>\n{body}\n</svg>')


def bar_rows(name: str, title: str, labelled: list[tuple[str, list[Bar], str]], top: float) -> str:
    """One row per label, its bars stacked thin under one another, each scaled to `top`; a note after them."""
    label_width, bar_width, gap = 260, 360, 8
    parts, y = [], 10
    for label, bars, note in labelled:
        thickness = 20 / max(1, len(bars))
        parts.append(f'<text x="0" y="{y + 15}">{escape(label)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y}" width="{bar_width}" height="20" fill="#eee"/>')
        for i, bar in enumerate(bars):
            width = bar.value / top * bar_width if top else 0
            parts.append(f'<rect class="{bar.css}" x="{label_width}" y="{y + i * thickness:.1f}" width="{width:.1f}" '
                         f'height="{thickness:.1f}" fill="{bar.colour}"><title>{escape(bar.title)}</title></rect>')
        parts.append(f'<text x="{label_width + bar_width + gap}" y="{y + 15}">{escape(note)}</text>')
        y += 26
    return svg(name, title, y + 10, parts)


def bar_columns(name: str, title: str, groups: list[tuple[str, list[Bar]]], top: float) -> str:
    """Vertical bars, side by side within each group (e.g. live and silent cards of one week)."""
    left, plot_width, plot_height, base = 50, WIDTH - 60, 180, 200
    step = plot_width / max(1, len(groups))
    label_every = max(1, round(len(groups) / 12))
    parts = [f'<text x="0" y="{base - plot_height + 4}">{top:g}</text>', f'<text x="0" y="{base}">0</text>',
             f'<line x1="{left}" y1="{base}" x2="{left + plot_width}" y2="{base}" stroke="#999"/>']
    for i, (label, bars) in enumerate(groups):
        x = left + i * step + step * 0.1
        width = step * 0.8 / max(1, len(bars))
        for j, bar in enumerate(bars):
            height = bar.value / top * plot_height if top else 0
            parts.append(f'<rect class="{bar.css}" x="{x + j * width:.1f}" y="{base - height:.1f}" width="{width:.1f}" '
                         f'height="{height:.1f}" fill="{bar.colour}"><title>{escape(bar.title)}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{left + (i + 0.5) * step:.1f}" y="{base + 16}" text-anchor="middle">'
                         f'{escape(label)}</text>')
    return svg(name, title, base + 30, parts)
