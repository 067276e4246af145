"""The drift report: per feature, the reference and live distributions side by side.

:class:`DriftReport` is what a serving pod answers on ``GET
/v2/models/{name}/drift`` (JSON) and what ``kubeloop drift-report`` reads;
:func:`render_html` turns it into one self-contained HTML page — inline CSS and
inline SVG bars, no script and no external resource, so the file opens offline and
its Content-Security-Policy forbids anything else. Every string from the model
(feature names, categories) is HTML-escaped: a category is user data.

Pure: data in, a string out (imports only pydantic), so the serving image and the
command line render the same page.
"""

from __future__ import annotations

import math
from html import escape
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Forbids every script and external load: the page is only markup, styles and SVG.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
#: SVG chart geometry (pixels)
BAR_AREA_HEIGHT, LABEL_HEIGHT, SLOT_WIDTH, MIN_CHART_WIDTH, TOP, LEFT = 160, 70, 44, 360, 10, 48
#: most characters of a bin label under its bars (the full label is in its tooltip)
LABEL_CHARS = 14


class FeatureDrift(BaseModel):
    """One column: its buckets, the share of rows in each (reference and live), and PSI."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Feature name (or 'prediction').")
    kind: Literal["numeric", "categorical"]
    bins: list[str] = Field(description="Bucket labels: histogram bins or categories.")
    reference: list[float] = Field(description="Share of the reference rows per bucket.")
    live: list[float] = Field(description="Share of the live window's rows per bucket.")
    score: float = Field(description="PSI of live against reference.")
    threshold: float = Field(description="PSI above which the feature counts as drifted.")
    drifted: bool

    @model_validator(mode="after")
    def _one_share_per_bin(self) -> Self:
        if not len(self.bins) == len(self.reference) == len(self.live):
            raise ValueError(
                f"{self.name}: one reference and one live share per bin are needed "
                f"({len(self.bins)} bins, {len(self.reference)} and {len(self.live)} shares)"
            )
        return self


class DriftReport(BaseModel):
    """A model's drift as one serving process sees it (its sliding window)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    version: str
    method: Literal["psi"] = "psi"
    threshold: float
    window: int = Field(description="Rows the sliding window holds at most.")
    rows: int = Field(description="Rows in the window now.")
    generated: str = Field(description="When the report was made (RFC 3339, UTC).")
    features: list[FeatureDrift]
    prediction: FeatureDrift | None = None

    def ordered(self) -> list[FeatureDrift]:
        """Features most drifted first (then by name, so equal scores keep one order)."""
        return sorted(self.features, key=lambda f: (-_sortable(f.score), f.name))


def _sortable(score: float) -> float:
    return score if math.isfinite(score) else math.inf


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2933;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0}
.summary{color:#52606d;margin-bottom:16px}
.legend span{display:inline-block;margin-right:16px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.ref{fill:#7b93b8}.live{fill:#e8833a}.ref-bg{background:#7b93b8}.live-bg{background:#e8833a}
.feature{border:1px solid #d9e2ec;border-radius:6px;padding:12px 16px;margin:12px 0}
.feature.drifted{border-color:#d64545;background:#fff8f8}
.head{display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
.badge{border-radius:4px;padding:1px 8px;font-size:12px;color:#fff;background:#3e7c17}
.drifted .badge{background:#d64545}
.kind{color:#7b8794;font-size:12px}
svg text{font-size:11px;fill:#52606d}
.empty{color:#7b8794;font-style:italic}
"""


def render_html(report: DriftReport) -> str:
    """The report as one HTML page: most-drifted feature first, then the prediction."""
    ordered = report.ordered()
    drifted = sum(f.drifted for f in ordered)
    title = f"Drift report: {report.model} {report.version}"
    sections = [_section(f, i, report.rows) for i, f in enumerate(ordered)]
    if report.prediction is not None:
        sections.append('<h2 class="predictions">Predictions</h2>')
        sections.append(_section(report.prediction, len(ordered), report.rows))
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            '<p class="summary">',
            f"{drifted} of {len(ordered)} features drifted "
            f"({escape(report.method.upper())} above {_num(report.threshold)}); "
            f"{report.rows} live rows in a window of {report.window}; "
            f"generated {escape(report.generated)}.</p>",
            '<p class="legend"><span><i class="swatch ref-bg"></i>reference (training)</span>',
            '<span><i class="swatch live-bg"></i>live (serving window)</span></p>',
            *sections,
            "</body></html>\n",
        ]
    )


def _section(f: FeatureDrift, index: int, rows: int) -> str:
    """One feature: its name, score against threshold, and the bars."""
    state = "drifted" if f.drifted else "ok"
    chart = _chart(f, index) if rows else '<p class="empty">no live rows yet</p>'
    return (
        f'<section class="feature {state}" id="feature-{index}" '
        f'data-feature="{escape(f.name)}" data-score="{_num(f.score, 6)}" '
        f'data-threshold="{_num(f.threshold, 6)}" data-drifted="{str(f.drifted).lower()}">'
        f'<div class="head"><h2>{escape(f.name)}</h2>'
        f'<span class="badge">{state}</span>'
        f'<span class="score">score {_num(f.score)}</span>'
        f'<span class="threshold">threshold {_num(f.threshold)}</span>'
        f'<span class="kind">{f.kind}</span></div>{chart}</section>'
    )


def _chart(f: FeatureDrift, index: int) -> str:
    """Grouped bars, one pair (reference, live) per bucket, on a shared share axis."""
    top = max([*f.reference, *f.live, 1e-12])
    width = max(MIN_CHART_WIDTH, LEFT + SLOT_WIDTH * len(f.bins) + 10)
    height = TOP + BAR_AREA_HEIGHT + LABEL_HEIGHT
    base = TOP + BAR_AREA_HEIGHT
    bar = (SLOT_WIDTH - 8) / 2
    parts = [
        f'<svg class="chart" id="chart-{index}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(f.name)}: reference and live shares per bucket">',
        f'<line x1="{LEFT}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#9aa5b1"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#9aa5b1"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{_pct(top)}</text>',
        f'<text x="{LEFT - 4}" y="{base}" text-anchor="end">0%</text>',
    ]
    for i, (label, ref, live) in enumerate(zip(f.bins, f.reference, f.live, strict=True)):
        x = LEFT + SLOT_WIDTH * i + 4
        tip = escape(f"{label}: reference {_pct(ref)}, live {_pct(live)}")
        parts.append(f'<g class="bucket"><title>{tip}</title>')
        for cls, share, dx in (("ref", ref, 0.0), ("live", live, bar)):
            h = _bar_height(share, top)
            parts.append(
                f'<rect class="bar {cls}" x="{x + dx:.1f}" y="{base - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"/>'
            )
        short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
        cx, ty = x + bar, base + 12
        parts.append(
            f'<text x="{cx:.1f}" y="{ty}" text-anchor="end" '
            f'transform="rotate(-40 {cx:.1f} {ty})">{escape(short)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _bar_height(share: float, top: float) -> float:
    """Pixels for ``share`` (a nonzero share is at least one pixel tall)."""
    if share <= 0 or not math.isfinite(share):
        return 0.0
    return max(1.0, BAR_AREA_HEIGHT * share / top)
