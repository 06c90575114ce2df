/* Ripple storefront snippet: a first-party visitor cookie, referral clicks, views and
   orders, sent in batches with navigator.sendBeacon to the collector that served it.
   <script src="https://collect.example/ripple.js"></script>
   ripple.view(creatorId, contentId); ripple.order({order_id: ..., customer_id: ..., ...}) */
(function (w, d) {
  "use strict";
  if (w.ripple && w.ripple.visitorId) return;
  var script = d.currentScript;
  var REF = (script && script.getAttribute("data-ref-param")) || "__REF_PARAM__";
  // next to the script: https://collect.example/ripple.js posts to https://collect.example/v1/events
  var ENDPOINT = (script && script.getAttribute("data-endpoint")) ||
    new URL("v1/events", script ? script.src : location.href).href;
  var COOKIE = "ripple_vid", SAVED = "ripple_unsent", MAX_BATCH = 50, DELAY_MS = 1000;
  var ID = /^[A-Za-z0-9_-]{8,64}$/;
  var queue = [], timer = null;

  function newId() { // 16 random bytes, URL-safe base64: the format the collector uses too
    var bytes = new Uint8Array(16), text = "";
    w.crypto.getRandomValues(bytes);
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function readCookie() {
    var m = d.cookie.match(/(?:^|;\s*)ripple_vid=([^;]*)/);
    return m && ID.test(m[1]) ? m[1] : null;
  }
  function store(area, key, value) {
    try { if (value === null) w[area].removeItem(key); else w[area].setItem(key, value); } catch (e) { /* off */ }
  }
  function stored(area, key) {
    try { return w[area].getItem(key); } catch (e) { return null; }
  }

  // The visitor: handed over by a /r/{code} redirect (?ripple_vid=), else this site's cookie, else new.
  var url = new URL(location.href);
  var handed = url.searchParams.get("ripple_vid");
  if (handed !== null) {
    url.searchParams.delete("ripple_vid");
    if (w.history && history.replaceState) history.replaceState(history.state, "", url.href);
    if (!ID.test(handed)) handed = null;
  }
  var visitor = handed || readCookie() || newId();
  d.cookie = COOKIE + "=" + visitor + "; Max-Age=31536000; Path=/; SameSite=Lax" +
    (location.protocol === "https:" ? "; Secure" : "");

  function send(batch) {
    // this browser's clock at sending: the collector moves each ts by its own time minus this
    var now = Date.now();
    for (var i = 0; i < batch.length; i++) batch[i].sent_ts = now;
    var body = JSON.stringify(batch);
    if (navigator.sendBeacon) { // text/plain: a simple request, no preflight
      return navigator.sendBeacon(ENDPOINT, new Blob([body], { type: "text/plain;charset=UTF-8" }));
    }
    if (w.fetch) {
      fetch(ENDPOINT, { method: "POST", body: body, keepalive: true, credentials: "omit",
        headers: { "Content-Type": "text/plain;charset=UTF-8" } });
      return true;
    }
    return false;
  }
  function flush() {
    clearTimeout(timer);
    timer = null;
    while (queue.length) {
      var batch = queue.slice(0, MAX_BATCH);
      if (!send(batch)) { timer = setTimeout(flush, 5 * DELAY_MS); break; } // same event ids next time
      queue.splice(0, batch.length);
    }
  }
  function push(event) {
    event.event_id = event.event_id || event.type.charAt(0) + "-" + newId();
    event.ts = event.ts || Date.now();
    queue.push(event);
    if (!timer) timer = setTimeout(flush, DELAY_MS);
    return event.event_id;
  }
  function merge(target, extra) {
    for (var k in extra) if (Object.prototype.hasOwnProperty.call(extra, k)) target[k] = extra[k];
    return target;
  }

  // What a previous page could not send goes first, with its event ids.
  try { queue = JSON.parse(stored("localStorage", SAVED) || "[]"); } catch (e) { queue = []; }
  store("localStorage", SAVED, null);
  if (queue.length) timer = setTimeout(flush, DELAY_MS);
  w.addEventListener("pagehide", function () {
    flush();
    if (queue.length) store("localStorage", SAVED, JSON.stringify(queue));
  });
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") flush(); });

  // A landing with ?ref=CODE (not through /r/, which records its click itself): one click per
  // page and tab, so a reload does not count again.
  var ref = url.searchParams.get(REF);
  if (ref && !handed) {
    var seen = "ripple_click:" + ref + ":" + location.pathname;
    if (!stored("sessionStorage", seen)) {
      var click = { type: "click", visitor_id: visitor, ref: ref.slice(0, 128), landing_url: url.href.slice(0, 2048) };
      ["utm_source", "utm_medium", "utm_campaign", "utm_content"].forEach(function (name) {
        var value = url.searchParams.get(name);
        if (value) click[name] = value.slice(0, 256);
      });
      try {
        var from = d.referrer ? new URL(d.referrer).hostname.replace(/^www\./, "") : "";
        if (from && from !== location.hostname) click.referrer_domain = from;
      } catch (e) { /* no referrer */ }
      store("sessionStorage", seen, push(click));
    }
  }

  w.ripple = {
    visitorId: function () { return visitor; },
    view: function (creatorId, contentId, extra) {
      return push(merge({ type: "view", visitor_id: visitor, creator_id: String(creatorId),
        content_id: String(contentId) }, extra || {}));
    },
    order: function (order) {
      var event = merge({ type: "order", visitor_id: visitor }, order || {});
      // the same id a server sending this order uses: whichever arrives second is a duplicate
      if (!event.event_id && event.order_id) event.event_id = "order-" + event.order_id;
      return push(event);
    },
    flush: flush
  };
})(window, document);
