"""meshd's web page (/ui/, issue 20) in a real headless Chromium driven by selenium, against a
running mesh with traffic: productpage -> reviews v1 and v2 (an 80/20 split) at a known rate.
After the admin token is entered the page shows the graph's two edges with rates close to the
load, the route table, the three proxies with their certificate expiry; a config the sidecars
refuse shows NACK and its error text; a wrong token shows the 401 message; the console has no
JavaScript errors. With WEB_UI_SCREENSHOTS=DIR it saves the screenshots docs/web-ui.md shows."""

import http.client
import json
import os
import pathlib
import re
import threading
import time
import urllib.request

import pytest
from selenium import webdriver  # PyPI selenium (scripts/setup-deps.sh)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from conftest import curl, wait_until
from test_config_push import SPLIT, mesh

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RATE = 25.0   # requests per second the load sends

NACKED = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.test
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /nonexistent/web-ui-absent-ca.pem}
"""


class Load:
    """RATE requests/s to reviews through productpage's sidecar, on one kept-alive connection;
    counts the answers by body and their times."""

    def __init__(self, outbound):
        self.outbound = outbound
        self.times, self.bodies, self.errors = [], {}, []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        conn = None
        start = time.monotonic()
        n = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.outbound, timeout=5)
                conn.request("GET", "/load", headers={"Host": "reviews"})
                r = conn.getresponse()
                body = r.read().decode().strip()
                self.bodies[body] = self.bodies.get(body, 0) + 1
                self.times.append(time.monotonic())
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(repr(e))
                conn = None
            n += 1
            # Paced: request n at start + n / RATE.
            delay = start + n / RATE - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)

    def rate(self, seconds=4.0):
        now = time.monotonic()
        return sum(1 for t in self.times if t > now - seconds) / seconds

    def close(self):
        self.stop.set()
        self.t.join(timeout=10)


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield d
    finally:
        d.quit()


def severe(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def cells(driver, table):
    """The rows of a table's body as lists of cell texts (read at once: the page re-renders)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map("
        "(tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.textContent))", f"#{table} tbody tr")


def graph(driver):
    """The SVG graph's edges (source, destination, label) and node ids, read at once."""
    return driver.execute_script(
        "const s = document.querySelector('#graph svg');"
        "return [Array.from(s.querySelectorAll('g.edge')).map((g) => [g.dataset.source, g.dataset.destination,"
        " g.querySelector('text').textContent]), Array.from(s.querySelectorAll('g.node')).map((g) => g.dataset.id)]")


def sign_in(driver, token):
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()


def shot(driver, name):
    out = os.environ.get("WEB_UI_SCREENSHOTS")
    if not out:
        return
    path = pathlib.Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))


def test_the_page_shows_the_mesh_its_traffic_and_a_nack(procs, tmp_path, browser):
    m, outbound, _ = mesh(procs)
    split = tmp_path / "split.yaml"
    split.write_text(SPLIT.replace("W1", "80").replace("W2", "20"))
    m.ctl("apply", "-f", split, "--wait")
    token = (m.state / "admin-token").read_text().strip()
    base = f"http://127.0.0.1:{m.admin}"

    # The data endpoints want the token; the page itself does not (and carries no data).
    for path in ("/ui/api/mesh", "/ui/api/canaries"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=5)
        assert e.value.code == 401, path
    with urllib.request.urlopen(base + "/ui/", timeout=5) as r:
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert token not in r.read().decode()

    load = Load(outbound)
    try:
        browser.get(base + "/ui/")
        assert browser.find_element(By.ID, "login").is_displayed()
        assert not browser.find_element(By.ID, "content").is_displayed()
        sign_in(browser, token)

        # The graph: both edges that carry traffic, with rates near the load's (80/20).
        def edges():
            rows = {(r[0], r[1]): r for r in cells(browser, "edges") if len(r) == 8}
            want = [("productpage.default unknown", f"reviews.default {v}") for v in ("v1", "v2")]
            return rows if all(k in rows for k in want) else None
        wait_until(edges, 30, what="the page's edge table with both edges")
        # The next window (meshd scrapes every 5 s), so one that straddled the start does not decide.
        time.sleep(5.5)
        rows = edges()
        sent = load.rate()
        v1 = float(rows[("productpage.default unknown", "reviews.default v1")][2])
        v2 = float(rows[("productpage.default unknown", "reviews.default v2")][2])
        assert 0.6 * sent <= v1 + v2 <= 1.4 * sent, (v1, v2, sent, rows)
        assert v1 > 2 * v2 > 0, (v1, v2)
        for r in rows.values():
            assert r[3] == "100%", r
            assert r[5].endswith(" ms"), r   # p99
            assert r[6] == "yes", r          # mTLS, as the receiving sidecars report it
            assert r[7] == "-", r            # no TCP on these edges
        svg_edges, nodes = graph(browser)
        assert sorted((e[0], e[1]) for e in svg_edges) == \
            [("productpage.default unknown", "reviews.default v1"), ("productpage.default unknown", "reviews.default v2")]
        for src, dst, label in svg_edges:
            assert re.fullmatch(r"\d+(\.\d)? req/s · 100% · p99 \d+(\.\d)? ms · mTLS", label), label
        nodes = set(nodes)
        assert {"productpage.default unknown", "reviews.default v1", "reviews.default v2"} <= nodes, nodes

        # The route table: the same route, split by version.
        routes = {(r[1], r[2]): r for r in cells(browser, "routes")}
        assert set(routes) == {("reviews", "v1"), ("reviews", "v2")}, routes
        assert all(r[0] == "reviews.canary" for r in routes.values()), routes
        assert abs(float(routes[("reviews", "v1")][3]) - v1) <= 0.25 * v1 + 2, (routes, v1)

        # The proxies: three, connected, ACK, each with its certificate's expiry (1h certificates).
        proxies = cells(browser, "proxies")
        assert len(proxies) == 3, proxies
        for p in proxies:
            assert p[0].startswith("spiffe://cluster.local/ns/default/sa/"), p
            assert p[2] == "yes" and p[5] == "ACK", p
            assert " UTC (in " in p[6], p
        # No canary endpoint on this meshd: the section stays hidden.
        assert not browser.find_element(By.ID, "canaries").is_displayed()
        assert severe(browser) == []
        shot(browser, "web-ui-graph.png")

        # A config the sidecars refuse: NACK and its error text on the page.
        bad = tmp_path / "nacked.yaml"
        bad.write_text(NACKED)
        m.ctl("apply", "-f", bad)

        def nacked():
            rows = [p for p in cells(browser, "proxies") if p[5].startswith("NACK")]
            return rows if len(rows) == 3 else None
        rows = wait_until(nacked, 20, what="NACK on the page")
        assert all("web-ui-absent-ca.pem" in p[5] for p in rows), rows
        assert browser.find_element(By.CSS_SELECTOR, "#proxies td.state-nack").is_displayed()
        assert curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.startswith(b"hello"), "still serving"
        assert severe(browser) == []
        browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "routes-h"))
        shot(browser, "web-ui-proxies-nack.png")

        # The canary section renders the contract's array as text, whatever it holds.
        canned = [{"namespace": "default", "name": "reviews", "host": "reviews", "stable": "v1", "canary": "v2",
                   "phase": "Progressing", "canaryWeight": 20, "maxWeight": 50, "failedChecks": 0, "threshold": 3,
                   "message": "<img src=x id=injected>step 2", "lastTransition": 1796601234}]
        browser.execute_script("window.meshUI.renderCanaries(arguments[0])", json.loads(json.dumps(canned)))
        assert browser.find_element(By.ID, "canaries").is_displayed()
        row = cells(browser, "canaries")[0]
        assert row[:5] == ["default/reviews", "reviews", "v1", "v2", "Progressing"], row
        assert row[7] == "<img src=x id=injected>step 2", row
        assert browser.find_elements(By.ID, "injected") == []
        # The next refresh (meshd has none) hides it again.
        wait_until(lambda: not browser.find_element(By.ID, "canaries").is_displayed(), 10, what="canaries hidden again")
        assert severe(browser) == []

        # A wrong token: the 401 message, the form again; the right one brings the page back.
        browser.find_element(By.ID, "signout").click()
        sign_in(browser, "not-the-token")
        err = browser.find_element(By.ID, "login-error")
        wait_until(lambda: err.is_displayed() and "401" in err.text, 10, what="the 401 message")
        assert "Enter it again" in err.text
        assert not browser.find_element(By.ID, "content").is_displayed()
        # The only console errors: the refused fetches themselves.
        assert all("401" in e["message"] and "/ui/api/" in e["message"] for e in severe(browser)), severe(browser)
        sign_in(browser, token)
        wait_until(lambda: browser.find_element(By.ID, "content").is_displayed() and len(cells(browser, "proxies")) == 3, 10,
                   what="the page back with the right token")
        assert severe(browser) == []
        assert load.errors == [], load.errors[:3]
    finally:
        load.close()
