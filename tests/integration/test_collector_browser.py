"""Shoppers in a real browser (Debian's headless Chromium) against a running ``ripple up``.

A test shop on ``localhost`` links to a creator's referral link on the collector
(``127.0.0.1``: another site, so the visitor id must travel from the collector's cookie to
the shop's). The first shopper opens the shop, follows the link (``/r/{code}`` records the
click and redirects to the product page), the page loads ``/ripple.js``, views the product
and places an order. The click, the view and the order must land in ClickHouse under one
visitor, with the hashed address and user agent, and the order must be attributed to the
code's creator. A second shopper (a fresh browser profile) lands on the shop straight from a
newsletter link carrying ``?ref=CODE``: the snippet records that click itself, and her order
is attributed too.
"""

from __future__ import annotations

import html
import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from stack import dump_dom, get, kill_all, spawn, wait_for

from ripple.broker import free_port
from sinks.clickhouse import ClickHouse

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Chromium's own headless user agent says HeadlessChrome, which is on the bot list: the
#: shopper is a desktop browser
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
CODE = "BROWSERJANE"
CREATOR = "cr-browser-jane"
ORDER = "browser-order-1"
DIRECT_ORDER = "browser-order-2"

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>Test shop</title></head>
<body>
<p>Jane recommends: <a id="go" href="{collector}/r/{code}?utm_source=instagram&utm_campaign=launch">our kettle</a></p>
<script>addEventListener("load", function () {{ document.getElementById("go").click(); }});</script>
</body></html>
"""

PRODUCT = """<!doctype html>
<html><head><meta charset="utf-8"><title>Kettle</title>
<script src="{collector}/ripple.js"></script>
</head>
<body>
<h1>Kettle</h1>
<script>
  ripple.view("{creator}", "product-kettle");
  ripple.order({{order_id: "{order}", customer_id: "cust-browser-1", amount_minor: 4999, currency: "EUR",
                is_new_customer: true, items: [{{sku: "kettle", qty: 1, price_minor: 4999}}]}});
  ripple.flush();
  document.body.setAttribute("data-visitor", ripple.visitorId());
  document.body.setAttribute("data-location", location.href);
</script>
</body></html>
"""

DIRECT = """<!doctype html>
<html><head><meta charset="utf-8"><title>Teapot</title>
<script src="{collector}/ripple.js"></script>
</head>
<body>
<h1>Teapot</h1>
<script>
  setTimeout(function () {{  // she looks a moment before she buys
    ripple.order({{order_id: "{order}", customer_id: "cust-browser-2", amount_minor: 2599, currency: "EUR"}});
    ripple.flush();
    document.body.setAttribute("data-visitor", ripple.visitorId());
  }}, 100);
</script>
</body></html>
"""


@dataclass
class Shop:
    url: str
    root: Path
    server: ThreadingHTTPServer


@pytest.fixture()
def shop(tmp_path: Path) -> Iterator[Shop]:
    root = tmp_path / "shop"
    root.mkdir()
    handler = partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Shop(f"http://localhost:{server.server_address[1]}", root, server)
    finally:
        server.shutdown()
        server.server_close()


def rules_without_click_injection(folder: Path) -> Path:
    """The shipped fraud rules, but a scripted shopper orders a second after the click,
    which click_injection (under 5 s) would block: its thresholds are set to 0 here."""
    folder.mkdir(parents=True, exist_ok=True)
    shipped = ROOT / "deploy" / "fraud"
    for name in ("bot-user-agents.txt", "coupon-domains.txt"):
        shutil.copy(shipped / name, folder / name)
    rules = json.loads((shipped / "rules.json").read_text())
    rules["rules"]["click_injection"] = {"block_below_ms": 0, "flag_below_ms": 0}
    (folder / "rules.json").write_text(json.dumps(rules))
    return folder / "rules.json"


def test_a_shopper_s_click_view_and_order_land_in_clickhouse_attributed(shop: Shop, tmp_path: Path) -> None:
    data = tmp_path / "data"
    collector_port, web_port = free_port(), free_port()
    collector = f"http://127.0.0.1:{collector_port}"
    (shop.root / "index.html").write_text(INDEX.format(collector=collector, code=CODE))
    (shop.root / "product.html").write_text(PRODUCT.format(collector=collector, creator=CREATOR, order=ORDER))
    (shop.root / "teapot.html").write_text(DIRECT.format(collector=collector, order=DIRECT_ORDER))
    env = {
        "RIPPLE_COLLECTOR_ORIGINS": shop.url,
        "RIPPLE_COLLECTOR_LANDING_URL": f"{shop.url}/",
        "RIPPLE_FRAUD_RULES": str(rules_without_click_injection(tmp_path / "fraud")),
    }
    log = tmp_path / "up.log"
    up = spawn(
        *("up", "--data-dir", str(data), "--web-port", str(web_port), "--collector-port", str(collector_port)),
        log=log,
        env=env,
    )
    started = time.monotonic()
    try:
        wait_for(lambda: (data / "runtime.json").exists(), 60, "runtime.json")
        runtime = json.loads((data / "runtime.json").read_text())
        assert runtime["collector"] == collector
        publish_code(runtime["bootstrap"], landing_url=f"{shop.url}/product.html?ref={CODE}")
        wait_for(lambda: get(f"{collector}/healthz")["codes"] == 1, 30, "the collector to know the code")

        dom = browse(f"{shop.url}/index.html", tmp_path / "profile-1")
        visitor = attribute(dom, "data-visitor")
        # the product page, with the visitor parameter taken off the address bar
        assert attribute(dom, "data-location") == f"{shop.url}/product.html?ref={CODE}"
        direct = f"{shop.url}/teapot.html?ref={CODE.lower()}&utm_source=newsletter&utm_medium=email"
        second = attribute(browse(direct, tmp_path / "profile-2"), "data-visitor")
        assert second != visitor

        def attributed() -> bool:
            totals = get(f"{runtime['web']}/api/totals")
            return bool(totals["clicks"] == totals["orders"] == totals["attributed"] == 2 and totals["views"] == 1)

        wait_for(attributed, 60, "the clicks, view and orders to be stored and the orders attributed")
        print(f"\nshoppers' orders attributed {time.monotonic() - started:.1f} s after 'ripple up' started")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            kill_all([up])
    assert up.returncode == 0, log.read_text()[-2000:]

    ch = ClickHouse(f"chdb://{data / 'clickhouse'}")
    try:
        clicks = {c["visitor_id"]: c for c in rows(ch, "SELECT * FROM ripple.clicks FINAL")}
        [view] = rows(ch, "SELECT * FROM ripple.views FINAL")
        orders = {o["order_id"]: o for o in rows(ch, "SELECT * FROM ripple.orders FINAL")}
        credits = {
            c["order_id"]: c
            for c in rows(ch, "SELECT * FROM ripple.attributions FINAL WHERE model = 'last_click' AND credit > 0")
        }
    finally:
        ch.close()
    assert set(clicks) == {visitor, second} and set(orders) == set(credits) == {ORDER, DIRECT_ORDER}
    click, order = clicks[visitor], orders[ORDER]
    # one visitor: the collector's cookie id, handed to the shop's first-party cookie
    assert click["visitor_id"] == view["visitor_id"] == order["visitor_id"] == visitor
    assert click["ref"] == CODE and click["creator_id"] == CREATOR
    assert (click["utm_source"], click["utm_campaign"]) == ("instagram", "launch")
    assert click["referrer_domain"] == "localhost"  # the shop page the link was on
    assert click["landing_url"] == f"{shop.url}/product.html?ref={CODE}"
    for event in (click, order):
        assert event["ip_hash"].startswith("h:") and len(event["ip_hash"]) == 34
        assert event["user_agent"] == USER_AGENT
    assert click["ip_hash"] == order["ip_hash"]  # one address, one hash; the address itself nowhere
    assert (view["creator_id"], view["content_id"]) == (CREATOR, "product-kettle")
    assert (order["order_id"], order["event_id"], order["amount_minor"]) == (ORDER, f"order-{ORDER}", 4999)
    credit = credits[ORDER]
    assert (credit["referrer_id"], credit["touch_type"]) == (CREATOR, "click")
    assert credit["touch_event_id"] == click["event_id"] and credit["credit"] == 1

    # the second shopper: the snippet's own click (from ?ref=), her order credited to it
    click, order = clicks[second], orders[DIRECT_ORDER]
    assert click["ref"] == CODE.lower() and order["visitor_id"] == second
    assert (click["utm_source"], click["utm_medium"]) == ("newsletter", "email")
    assert click["landing_url"] == direct and click["referrer_domain"] == ""  # typed in: no referrer
    assert click["ip_hash"] == order["ip_hash"] and click["user_agent"] == USER_AGENT
    credit = credits[DIRECT_ORDER]
    assert (credit["referrer_id"], credit["touch_event_id"]) == (CREATOR, click["event_id"])


def browse(url: str, profile: Path) -> str:
    """The DOM of the page Chromium ends on after opening ``url`` with a fresh profile."""
    page = dump_dom(url, 15000, f"--user-data-dir={profile}", f"--user-agent={USER_AGENT}")
    assert 'data-visitor="' in page, page[-2000:]
    return page


def attribute(dom: str, name: str) -> str:
    return html.unescape(dom.split(f'{name}="', 1)[1].split('"', 1)[0])


def publish_code(bootstrap: str, landing_url: str) -> None:
    """The creator and her referral code, as the program's admin would publish them."""
    now = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    code = {"code": CODE, "referrer_id": CREATOR, "referrer_type": "creator", "issued_ts": now - 86_400_000,
            "landing_url": landing_url}  # fmt: skip
    creator = {"creator_id": CREATOR, "handle": "browserjane", "platform": "instagram", "followers": 12_000}
    producer.produce("codes", key=CODE.lower().encode(), value=orjson.dumps(code))
    producer.produce("creators", key=CREATOR.encode(), value=orjson.dumps(creator))
    assert producer.flush(10) == 0


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def rows(ch: ClickHouse, sql: str) -> list[dict[str, Any]]:
    return ch.query_dicts(sql)
