"""The drift report, end to end: a real ``kubeloop serve`` with a token, shifted traffic,
the report over the real socket, opened in a real headless browser (Debian's chromium
driven by Playwright), and ``kubeloop drift-report --url`` writing the file.

The browser routes every request: the page must ask for nothing beyond itself.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import pytest
from serving_helpers import KUBELOOP, serving

from kubeloop.driftreport import DriftReport, FeatureDrift, render_html
from needs import chromium

TOKEN = "dr1ft-R3port_token"
NAME = "mixed"
PAGE = f"/v2/models/{NAME}/drift-report"
JSON = f"/v2/models/{NAME}/drift"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def drifted(mixed_model, data_dir, token_file):
    """The mixed model served with a token, its window full of rows whose age is shifted
    and whose city is one the training never saw; income as in training."""
    env = {"KUBELOOP_SERVING_DRIFT_WINDOW": "200", "KUBELOOP_SERVING_DRIFT_THRESHOLD": "0.2"}
    rows = pd.read_csv(data_dir / "mixed.csv").drop(columns=["outcome"]).iloc[:200].copy()
    rows["age"] = rows["age"] * 2 + 30
    rows.loc[rows.index[:120], "city"] = "berlin"
    with serving(mixed_model, "--name", NAME, "--token-file", str(token_file), env=env) as server:
        with server.client() as http:
            for start in range(0, 200, 50):
                part = rows.iloc[start : start + 50].astype(object)
                instances = part.where(part.notna(), None).to_dict(orient="records")
                r = http.post(f"/v1/models/{NAME}:predict", json={"instances": instances})
                assert r.status_code == 200, r.text
        yield server


@contextmanager
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_report_routes_need_the_token(drifted):
    with drifted.client() as http:
        for path in (PAGE, JSON):
            r = http.get(path)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
            assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
            assert http.get(path, headers={"X-Kubeloop-Token": "wrong"}).status_code == 403
            assert http.get(path, headers={"X-Kubeloop-Token": TOKEN}).status_code == 200
            assert http.get(path, headers=BEARER).status_code == 200
        assert http.get("/v2/models/other/drift", headers=BEARER).status_code == 404


def test_the_json_report_ranks_the_shifted_features_above_the_calm_one(drifted):
    with drifted.client() as http:
        r = http.get(JSON, headers=BEARER)
    assert r.status_code == 200, r.text
    report = DriftReport.model_validate_json(r.content)
    assert report.rows == 200
    assert report.window == 200
    assert report.threshold == 0.2
    by_name = {f.name: f for f in report.features}
    assert set(by_name) == {"age", "income", "city"}
    assert by_name["age"].drifted
    assert by_name["city"].drifted
    assert not by_name["income"].drifted, by_name["income"].score
    assert [f.name for f in report.ordered()][-1] == "income"
    assert "(unseen)" in by_name["city"].bins
    assert report.prediction is not None
    for f in report.features:
        assert math.isclose(sum(f.reference), 1.0)
        assert math.isclose(sum(f.live), 1.0)


def test_the_page_renders_in_a_browser_without_asking_for_anything(drifted):
    with drifted.client() as http:
        expected = DriftReport.model_validate_json(http.get(JSON, headers=BEARER).content)
        served = http.get(PAGE, headers=BEARER)
    assert served.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in served.headers["content-security-policy"]
    order = [f.name for f in expected.ordered()]
    url = drifted.url + PAGE
    requested: list[str] = []
    with browser() as b:
        context = b.new_context(extra_http_headers=BEARER)  # type: ignore[attr-defined]
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def gate(route):
            requested.append(route.request.url)
            if route.request.url == url:
                route.continue_()
            else:
                route.abort()

        page.route("**/*", gate)
        response = page.goto(url)
        assert response is not None
        assert response.status == 200
        check_charts(page, order, expected)
        assert [u for u in requested if u != url and not u.startswith("data:")] == []
        assert errors == []
        context.close()


def check_charts(page, order: list[str], expected: DriftReport) -> None:
    """Most drifted first; per feature a reference and a live bar of nonzero size, its
    score and threshold on screen."""
    sections = page.locator("section.feature")
    assert sections.count() == len(order) + 1  # + the predictions
    names = [sections.nth(i).get_attribute("data-feature") for i in range(len(order))]
    assert names == order
    scores = {f.name: f for f in expected.features}
    for i, name in enumerate(order):
        section = sections.nth(i)
        assert section.locator("h2").inner_text() == name
        for side in ("ref", "live"):
            boxes = [r.bounding_box() for r in section.locator(f"rect.bar.{side}").all()]
            assert any(b and b["width"] > 0 and b["height"] > 0 for b in boxes), (name, side)
        assert section.locator(".score").inner_text() == f"score {scores[name].score:.3f}"
        assert section.locator(".threshold").inner_text() == "threshold 0.200"
        assert section.locator(".badge").inner_text() == (
            "drifted" if scores[name].drifted else "ok"
        )
    assert section.locator("svg").bounding_box()["width"] > 0
    city = page.locator('section.feature[data-feature="city"] svg text')
    # berlin, a city the training never saw, is counted as unseen
    assert any("(unseen)" in t for t in city.all_text_contents())


def test_a_hostile_feature_name_is_text_in_the_browser():
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    feature = FeatureDrift(
        name=hostile, kind="categorical", bins=[hostile, "b"], reference=[0.5, 0.5],
        live=[0.9, 0.1], score=0.4, threshold=0.2, drifted=True,
    )  # fmt: skip
    report = DriftReport(model="m", version="v", threshold=0.2, window=10, rows=10,
                         generated="2026-01-01T00:00:00Z", features=[feature])  # fmt: skip
    requested: list[str] = []
    with browser() as b:
        page = b.new_page()  # type: ignore[attr-defined]
        page.route("**/*", lambda route: (requested.append(route.request.url), route.abort()))
        page.set_content(render_html(report))
        assert page.evaluate("window.pwned") is None
        assert page.locator("section.feature h2").inner_text() == hostile
        assert page.locator("script, img").count() == 0
    assert requested == []


def test_the_cli_writes_the_report_from_a_url(drifted, token_file, tmp_path):
    out = tmp_path / "report.html"
    argv = [str(KUBELOOP), "drift-report", "--url", drifted.url, "--out", str(out)]
    done = subprocess.run([*argv, "--token-file", str(token_file)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{NAME} " in done.stdout
    assert "2 of 3 features drifted" in done.stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'data-feature="city"' in page
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "401" in refused.stderr
    assert "--token-file" in refused.stderr
