"""The gateway's dashboard in a real browser (headless Chromium through
chromedriver), checked against `dspex costs` (driven by
crates/dspex-cli/tests/serve.rs).

Usage: python dashboard_browser.py GATEWAY_URL RANGE COSTS_JSON SCREENSHOT_PNG
  The admin key comes from $DSPEX_ADMIN_KEY; chromium and chromedriver from
  $DSPEX_TEST_CHROMIUM and $DSPEX_TEST_CHROMEDRIVER (defaults: Debian's).
  COSTS_JSON is `dspex costs --group-by key --format json` for RANGE.
"""

import json
import os
import sys
import tempfile
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

base_url, time_range, costs_path, screenshot = sys.argv[1:5]
admin_key = os.environ["DSPEX_ADMIN_KEY"]
costs = json.load(open(costs_path))

options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("DSPEX_TEST_CHROMIUM", "/usr/bin/chromium")
profile = tempfile.mkdtemp(prefix="dspex-chromium-")
for flag in [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
    f"--user-data-dir={profile}", "--window-size=1280,2400",
]:
    options.add_argument(flag)
service = Service(executable_path=os.environ.get("DSPEX_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
driver = webdriver.Chrome(service=service, options=options)
try:
    page = f"{base_url}/dashboard?range={urllib.parse.quote(time_range)}"
    driver.get(page)
    # No session yet: the login form.
    assert driver.current_url.endswith("/dashboard/login"), driver.current_url
    field = driver.find_element(By.NAME, "admin_key")
    field.send_keys(admin_key)
    field.submit()
    assert "/dashboard" in driver.current_url and "login" not in driver.current_url, driver.current_url
    driver.get(page)
    assert "login" not in driver.current_url, driver.current_url

    shown = {
        element.get_attribute("data-metric"): element.get_attribute("data-value")
        for element in driver.find_elements(By.CSS_SELECTOR, "[data-metric]")
    }
    def total(field):
        return sum(row[field] for row in costs)
    for metric, field in [
        ("requests", "requests"), ("errors", "errors"), ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"), ("cost_nanos", "cost_nanos"), ("cache_hits", "cache_hits"),
    ]:
        assert int(shown[metric]) == total(field), (metric, shown[metric], total(field))

    table = driver.find_element(By.CSS_SELECTOR, 'table[data-breakdown="key"]')
    rows = {}
    for row in table.find_elements(By.CSS_SELECTOR, "tr[data-group]"):
        cells = {
            cell.get_attribute("data-col"): cell.get_attribute("data-value")
            for cell in row.find_elements(By.CSS_SELECTOR, "td[data-col]")
        }
        rows[row.get_attribute("data-group")] = cells
    expected = {}
    for row in costs:
        name = next(iter(row["group"].values()))
        expected["-" if name is None else name] = row
    assert set(rows) == set(expected), (rows.keys(), expected.keys())
    for name, row in expected.items():
        for column in ["requests", "errors", "input_tokens", "output_tokens", "cost_nanos", "cache_hits"]:
            assert int(rows[name][column]) == row[column], (name, column, rows[name][column], row[column])

    # The charts are there, one bar group per hour with calls.
    assert driver.find_elements(By.CSS_SELECTOR, 'svg[data-chart="spend"] g.bar'), "no spend bars"
    assert driver.find_elements(By.CSS_SELECTOR, 'table[data-table="providers"] tr[data-provider]')
    driver.save_screenshot(screenshot)
    print(f"dashboard: all checks passed ({len(rows)} keys, {shown['requests']} requests; screenshot {screenshot})")
finally:
    driver.quit()
