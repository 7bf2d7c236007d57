"""The fleet page's bake block: memory over time against the budget, restarts, health, the outcome; escaped."""
from __future__ import annotations

import re

from test_reports import render_fleet


def _bake(passed, memories, budget=1320.0, restarts=0):
    samples = [{"index": i, "time": f"2026-12-04T03:00:{i * 2:02d}Z", "elapsed_s": i * 2.0, "rss_mb": m - 5,
                "rss_peak_mb": m, "n_restarts": restarts if i else 0, "health_ok": True, "health_msg": "HTTP 200"}
               for i, m in enumerate(memories)]
    return {"release": "int8-bbbbbbbbbbbb", "passed": passed, "samples": samples, "budget_mb": budget,
            "peak_memory_mb": max(memories), "msg": "bake of int8-bbbbbbbbbbbb: <b>sample</b> & more"}


def test_fleet_page_shows_each_bake_with_its_chart_budget_and_outcome():
    hosts = [{"host": "agi1", "status": "rolled_back", "release_before": "fp32-a", "release_after": "fp32-a",
              "bake": _bake(False, [400.0, 900.0, 1650.0], restarts=1)},
             {"host": "agi2", "status": "passed", "release_before": "fp32-a", "release_after": "int8-b",
              "bake": _bake(True, [400.0, 410.0, 420.0, 415.0])},
             {"host": "agi3", "status": "unchanged", "release_before": "int8-b", "release_after": "int8-b", "bake": {}}]
    page = render_fleet(hosts, "int8-bbbbbbbbbbbb")
    block = page.split("<h2>Bake</h2>")[1]
    rows = re.findall(r'<tr class="(\w+)">\s*<td><strong>(\w+)</strong>', block)
    assert rows == [("fail", "agi1"), ("pass", "agi2")]  # agi3 did not bake
    lines = re.findall(r'<polyline [^>]*points="([^"]*)"', block)
    assert [len(points.split()) for points in lines] == [3, 4]
    assert len(re.findall(r'stroke-dasharray="4 3"', block)) == 2  # the budget line of each
    assert "&lt;b&gt;sample&lt;/b&gt; &amp; more" in block and "<b>sample</b>" not in block
    assert "breached" in block and "3/3 ok" in block and "4/4 ok" in block
    assert re.search(r'<td class="num">1</td>\s*<td>3/3 ok', block)  # agi1's restart


def test_fleet_page_without_a_bake_has_no_bake_block():
    hosts = [{"host": "agi1", "status": "passed", "release_before": "fp32-a", "release_after": "int8-b"}]
    assert "<h2>Bake</h2>" not in render_fleet(hosts, "int8-bbbbbbbbbbbb")
