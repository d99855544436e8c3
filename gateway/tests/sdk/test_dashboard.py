"""The usage dashboard in headless Chromium: `kubectl-tollgate local` on the
quickstart prints the dashboard's URL; the page is loaded empty, then after
known requests made with the official SDKs, and what it shows (totals, charts,
quota burn-down, top consumers, refusals) is checked against the recorder's own
usage answer. Screenshots go to the test's directory, and to docs/images when
TOLLGATE_UPDATE_SCREENSHOTS=1.

Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import anthropic
import openai
import pytest

from browser import Browser
from conftest import PROMPT_MARKER, REPO, wait_until
from test_local import QUICKSTART, Local, cli

SCREENSHOTS = REPO / "docs" / "images"


def count(n: int) -> str:
    return f"{n:,}"


def dollars(micro: int) -> str:
    return f"${micro // 1_000_000:,}.{micro % 1_000_000:06d}"


def text(browser: Browser, selector: str) -> str:
    return browser.evaluate(f"document.querySelector({json.dumps(selector)}).textContent.trim()")


def table(browser: Browser, table_id: str) -> list[list[str]]:
    return browser.evaluate(
        f"[...document.querySelectorAll('#{table_id} tbody tr')].map(tr => [...tr.cells].map(td => td.textContent.trim()))"
    )


def wait_loaded(browser: Browser, loads_before: int) -> str:
    """Waits for the page to finish a load after `loads_before` and returns its state."""
    return browser.wait_for(
        f"(document.body.dataset.state === 'error' || (window.tollgateDashboard && window.tollgateDashboard.loads > {loads_before}))"
        " && document.body.dataset.state !== 'loading' && document.body.dataset.state",
        timeout=30,
    )


def painted_pixels(browser: Browser, chart_id: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of the chart's canvas drawn in the series colour `rgb`."""
    r, g, b = rgb
    return browser.evaluate(
        f"""(() => {{
          const canvas = document.querySelector('#{chart_id} canvas');
          if (!canvas) return -1;
          const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let n = 0;
          for (let i = 0; i < data.length; i += 4) {{
            if (Math.abs(data[i] - {r}) < 40 && Math.abs(data[i + 1] - {g}) < 40 && Math.abs(data[i + 2] - {b}) < 40 && data[i + 3] > 0) n++;
          }}
          return n;
        }})()"""
    )


def usage_json(local: Local, *args: str) -> dict:
    proc = cli("usage", "--local", str(local.data), "-o", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def screenshot(browser: Browser, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    browser.screenshot(path)
    assert path.stat().st_size > 10_000, "a screenshot of a blank page"
    if os.environ.get("TOLLGATE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENSHOTS / name)


def test_the_dashboard_shows_what_the_recorder_counted(binaries, tmp_path: Path) -> None:
    local = Local(QUICKSTART, tmp_path / "data")
    m = re.search(r"^tollgate local: dashboard (http://127\.0\.0\.1:(\d+)/dashboard/#token=([0-9a-f]{64}))$", local.stdout(), re.M)
    assert m, f"local mode printed no dashboard URL:\n{local.stdout()}"
    url = m.group(1)
    assert int(m.group(2)) == local.recorder_port
    assert m.group(3) == (local.data / "local-token").read_text().strip()

    browser = Browser(height=1250)
    try:
        # A fresh recorder: an empty state, not an error.
        browser.navigate(url)
        assert wait_loaded(browser, 0) == "empty", text(browser, "#message")
        assert "No receipts in this range yet" in text(browser, "#message")
        assert text(browser, "#total-requests") == "0"
        assert browser.evaluate("location.hash") == "", "the token stays out of the address bar"
        assert table(browser, "consumers") == [["No requests in this range."]]
        quota_rows = table(browser, "quotas")
        assert [r[:2] for r in quota_rows] == [["default/team-budget", "daily-tokens (day)"], ["default/team-budget", "burst (1m)"]], quota_rows
        assert quota_rows[0][2] == "0 tokens" and quota_rows[0][3] == "1,000,000 tokens", quota_rows
        screenshot(browser, tmp_path, "dashboard-empty.png")

        # Known traffic through the SDKs: 3 OpenAI and 2 Anthropic calls, 1 refused.
        oa = openai.OpenAI(base_url=local.exported("OPENAI_BASE_URL"), api_key="sk-anything", max_retries=0)
        for i in range(3):
            oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"{i} {PROMPT_MARKER}"}])
        an = anthropic.Anthropic(base_url=local.exported("ANTHROPIC_BASE_URL"), api_key="sk-ant-anything", max_retries=0)
        for i in range(2):
            an.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": f"{i} {PROMPT_MARKER}"}])
        with pytest.raises(openai.PermissionDeniedError):
            oa.chat.completions.create(model="gpt-5-not-allowed", messages=[{"role": "user", "content": "x"}])
        wait_until(lambda: usage_json(local)["total"]["requests"] == 6, 15, what="6 receipts at the recorder")

        expected = usage_json(local)["total"]
        by_model = usage_json(local, "--by", "model")["rows"]
        by_reason = {r["reason"]: r["requests"] for r in usage_json(local, "--by", "reason")["rows"]}
        assert by_reason == {"allowed": 5, "model_not_allowed": 1}, by_reason
        tokens = expected["input_tokens"] + expected["output_tokens"]
        assert tokens > 0 and expected["cost_micro_usd"] > 0, expected

        loads = browser.evaluate("window.tollgateDashboard.loads")
        browser.evaluate("document.getElementById('refresh').click()")
        assert wait_loaded(browser, loads) == "ready", text(browser, "#message")

        # The tiles are the recorder's totals.
        assert text(browser, "#total-requests") == count(expected["requests"])
        assert text(browser, "#total-input-tokens") == count(expected["input_tokens"])
        assert text(browser, "#total-output-tokens") == count(expected["output_tokens"])
        assert text(browser, "#total-cost") == dollars(expected["cost_micro_usd"])
        assert text(browser, "#total-refused") == "1"
        assert table(browser, "refusals") == [["model_not_allowed", "1"]]
        consumers = table(browser, "consumers")
        assert consumers == [["default", "local", count(6), count(tokens), dollars(expected["cost_micro_usd"])]], consumers
        # Quota burn-down: the day's tokens and the minute's requests so far.
        quota_rows = table(browser, "quotas")
        assert quota_rows[0][2] == f"{count(tokens)} tokens", quota_rows
        assert quota_rows[0][5] == f"{count(1_000_000 - tokens)} tokens", quota_rows
        assert re.fullmatch(r"\d{4}-\d\d-\d\d 00:00 UTC", quota_rows[0][6]), quota_rows
        # The per-minute limit counts the last 60 s: all six, or fewer on a slow run.
        assert re.fullmatch(r"[1-6] requests", quota_rows[1][2]) and re.fullmatch(r"[01]%", quota_rows[1][4]), quota_rows
        assert quota_rows[1][6] == "–" and quota_rows[1][7] == "–", "rolling windows neither reset nor run out"
        assert "1 open stream" in text(browser, "#freshness")

        # The charts: one series per namespace, summing to the totals, drawn.
        charts = browser.evaluate("window.tollgateDashboard.charts.map(c => ({names: c.names, sums: c.sums}))")
        assert [c["names"] for c in charts] == [["default"], ["default"]], charts
        assert abs(charts[0]["sums"][0] - expected["cost_micro_usd"] / 1e6) < 1e-9, charts
        assert charts[1]["sums"][0] == tokens, charts
        assert painted_pixels(browser, "chart-tokens", (47, 111, 222)) > 50, "the token series was not drawn"
        screenshot(browser, tmp_path, "dashboard-local.png")

        # By model: one series per model the recorder counted.
        loads = browser.evaluate("window.tollgateDashboard.loads")
        browser.evaluate("const s = document.getElementById('by'); s.value = 'model'; s.dispatchEvent(new Event('change'))")
        assert wait_loaded(browser, loads) == "ready"
        charts = browser.evaluate("window.tollgateDashboard.charts.map(c => ({names: c.names, sums: c.sums}))")
        want = {r["model"] or "(none)": r["input_tokens"] + r["output_tokens"] for r in by_model}
        assert dict(zip(charts[1]["names"], charts[1]["sums"])) == want, (charts, by_model)

        # A wrong token: the recorder's refusal, shown as an error.
        browser.navigate(url.split("#")[0] + "#token=" + "0" * 64)
        assert wait_loaded(browser, 10**9) == "error"
        assert "401" in text(browser, "#message"), text(browser, "#message")
        assert not [c for c in browser.console if "exception" in c], browser.console
    finally:
        browser.close()
        assert local.stop() == 0, local.stderr()
