"""The drift report: the pure page builder (order, escaping, self-containment) and the
serving side that turns a window's counts into report entries."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from pydantic import ValidationError

from kubeloop.driftreport import CSP, DriftReport, FeatureDrift, render_html
from kubeloop.serving.drift import (
    MAX_REPORT_BUCKETS,
    CategoricalReference,
    DriftWindow,
    NumericReference,
    bucket_labels,
    feature_drift,
    fold_buckets,
    psi,
    window_report,
)

HOSTILE = '<script>alert("x")</script>'


def feature(name, score, threshold=0.2, kind="numeric"):
    return FeatureDrift(
        name=name, kind=kind, bins=["a", "b"], reference=[0.5, 0.5], live=[0.2, 0.8],
        score=score, threshold=threshold, drifted=score > threshold,
    )  # fmt: skip


def report(*features, rows=100, prediction=None):
    return DriftReport(
        model="m", version="abc123", threshold=0.2, window=1000, rows=rows,
        generated="2026-01-01T00:00:00Z", features=list(features), prediction=prediction,
    )  # fmt: skip


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_features_come_most_drifted_first_then_by_name():
    r = report(feature("low", 0.01), feature("high", 3.0), feature("b-mid", 0.5),
               feature("a-mid", 0.5))  # fmt: skip
    assert [f.name for f in r.ordered()] == ["high", "a-mid", "b-mid", "low"]
    sections = [a for t, a in parse(render_html(r)).tags if t == "section"]
    assert [s["data-feature"] for s in sections] == ["high", "a-mid", "b-mid", "low"]
    assert [s["data-drifted"] for s in sections] == ["true", "true", "true", "false"]
    assert sections[0]["data-score"] == "3.000000"
    assert sections[0]["data-threshold"] == "0.200000"


def test_the_page_shows_scores_thresholds_and_a_bar_per_bucket_and_side():
    page = render_html(report(feature("age", 0.75), feature("city", 0.05, kind="categorical")))
    tags = parse(page)
    rects = [a for t, a in tags.tags if t == "rect"]
    assert len(rects) == 2 * 2 * 2  # 2 features x 2 buckets x (reference, live)
    assert all(float(a["height"] or 0) > 0 for a in rects)
    text = "".join(tags.text)
    assert "score 0.750" in text
    assert "threshold 0.200" in text
    assert "1 of 2 features drifted" in text


def test_hostile_names_and_categories_are_escaped():
    hostile = FeatureDrift(
        name=HOSTILE, kind="categorical", bins=[HOSTILE, '" onload="x'], reference=[0.5, 0.5],
        live=[1.0, 0.0], score=1.0, threshold=0.2, drifted=True,
    )  # fmt: skip
    page = render_html(report(hostile))
    assert "<script" not in page.lower()
    assert '" onload="' not in page
    tags = parse(page)
    assert not [t for t, _ in tags.tags if t == "script"]
    assert all(not k.startswith("on") for _, attrs in tags.tags for k in attrs)
    assert HOSTILE in "".join(tags.text)  # shown as text, intact
    (section,) = [a for t, a in tags.tags if t == "section"]
    assert section["data-feature"] == HOSTILE


def test_the_page_loads_nothing_and_runs_nothing():
    page = render_html(report(feature("age", 0.3), prediction=feature("prediction", 0.1)))
    assert f'content="{CSP}"' in page
    assert "default-src 'none'" in CSP
    assert "script-src" not in CSP
    urls = re.findall(r"(?:src|href)\s*=|url\(|@import|https?://(?!www\.w3)", page)
    assert urls == []
    tags = parse(page)
    assert {t for t, _ in tags.tags} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "i",
        "section", "div", "svg", "g", "line", "rect", "text",
    }  # fmt: skip


def test_an_empty_window_says_so_instead_of_drawing_empty_charts():
    page = render_html(report(feature("age", 0.0), rows=0))
    assert "no live rows yet" in page
    assert "<svg" not in page


def test_shares_and_bins_must_line_up():
    with pytest.raises(ValidationError, match="one reference and one live share per bin"):
        FeatureDrift(name="x", kind="numeric", bins=["a"], reference=[1.0], live=[],
                     score=0, threshold=0.2, drifted=False)  # fmt: skip


def test_the_report_round_trips_through_json():
    r = report(feature("age", 0.3), prediction=feature("prediction", 0.1))
    assert DriftReport.model_validate_json(r.model_dump_json()) == r


# ------------------------------------------------------------------- serving side


AGE = NumericReference("age", edges=[0.0, 10.0, 20.0], counts=[30, 70], missing=0)
CITY = CategoricalReference("city", categories=["paris", "rome"], counts=[60.0, 40.0])


def test_numeric_bucket_labels_follow_the_window_layout():
    assert bucket_labels(AGE) == ["< 0", "[0, 10)", "[10, 20]", "> 20", "(missing)"]
    assert bucket_labels(CITY) == ["paris", "rome", "(unseen)"]


def test_feature_drift_scores_as_the_gauge_and_hides_empty_open_buckets():
    counts = np.array([0, 10, 80, 10, 0])  # under, bin0, bin1, over, missing
    entry = feature_drift(AGE, counts, threshold=0.2)
    assert entry.bins == ["[0, 10)", "[10, 20]", "> 20"]
    assert entry.reference == pytest.approx([0.3, 0.7, 0.0])
    assert entry.live == pytest.approx([0.1, 0.8, 0.1])
    assert entry.score == pytest.approx(psi(AGE.expected(), counts))
    assert entry.drifted is (entry.score > 0.2)
    assert entry.kind == "numeric"


def test_an_empty_window_scores_zero():
    entry = feature_drift(CITY, np.zeros(3), threshold=0.2)
    assert entry.score == 0.0
    assert entry.drifted is False
    assert entry.live == [0.0, 0.0]


def test_window_report_matches_the_window_scores():
    window = DriftWindow([AGE, CITY], size=50)
    window.update([np.array([5.0, 15.0, 25.0, np.nan] * 10), ["paris", "oslo"] * 20])
    entries = window_report(window, threshold=0.2)
    scores = window.scores()
    assert [e.name for e in entries] == ["age", "city"]
    assert [e.score for e in entries] == pytest.approx([scores["age"], scores["city"]])
    city = entries[1]
    assert city.bins == ["paris", "rome", "(unseen)"]
    assert city.live == pytest.approx([0.5, 0.0, 0.5])
    assert "(missing)" in entries[0].bins
    assert "> 20" in entries[0].bins


def test_many_categories_fold_into_one_others_bucket_after_scoring():
    ref = CategoricalReference("id", categories=[f"c{i}" for i in range(100)], counts=[1.0] * 100)
    counts = np.zeros(101)
    counts[:10] = 10  # the live rows all in the first ten categories
    entry = feature_drift(ref, counts, threshold=0.2)
    assert len(entry.bins) == MAX_REPORT_BUCKETS
    assert entry.bins[:10] == [f"c{i}" for i in range(10)]
    assert entry.bins[-1] == f"({101 - MAX_REPORT_BUCKETS} others)"
    assert sum(entry.reference) == pytest.approx(1.0)
    assert sum(entry.live) == pytest.approx(1.0)
    assert entry.score == pytest.approx(psi(ref.expected(), counts))


def test_few_buckets_are_left_as_they_are():
    assert fold_buckets(["a", "b"], [0.5, 0.5], [1.0, 0.0], limit=2) == (
        ["a", "b"], [0.5, 0.5], [1.0, 0.0],
    )  # fmt: skip
