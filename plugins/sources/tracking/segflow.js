/* segflow.js: send page views, product views, time on page and scroll depth
 * to a segflow server's Segment-compatible API.
 *
 *   <script src="https://YOUR-SEGFLOW/t/segflow.js"
 *           data-write-key="sf_..." data-user-id="(optional, when logged in)"></script>
 *   <meta name="segflow:product" content="P0001">   (on product pages)
 *   segflow.track("Product Added", {product_id: "P0001", price: 12})
 *
 * Requests are text/plain POSTs carrying writeKey in the body, so browsers send
 * them without a CORS preflight; the ones sent while the page is being left use
 * keepalive so they are not cancelled.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var host = script.src.replace(/\/t\/segflow\.js.*$/, "");
  var writeKey = script.getAttribute("data-write-key");
  var userId = script.getAttribute("data-user-id") || null;

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "x-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  var anonymousId;
  try {
    anonymousId = localStorage.getItem("segflow_aid");
    if (!anonymousId) { anonymousId = uuid(); localStorage.setItem("segflow_aid", anonymousId); }
  } catch (e) { anonymousId = uuid(); }
  var sessionId = uuid();
  var started = Date.now();

  function send(call, body) {
    body.writeKey = writeKey;
    body.anonymousId = anonymousId;
    if (userId) body.userId = userId;
    body.messageId = uuid();
    body.timestamp = new Date().toISOString();
    body.context = {page: {url: location.href, title: document.title, referrer: document.referrer}};
    body.properties = Object.assign({session_id: sessionId}, body.properties || {});
    return fetch(host + "/v1/" + call, {
      method: "POST", mode: "no-cors", keepalive: true,
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify(body)
    }).catch(function () {});
  }

  var api = {
    page: function (props) { return send("page", {properties: Object.assign({url: location.href}, props || {})}); },
    track: function (event, props) { return send("track", {event: event, properties: props || {}}); },
    identify: function (id, traits) { userId = id; return send("identify", {traits: traits || {}}); }
  };
  window.segflow = api;

  api.page();
  var product = document.querySelector('meta[name="segflow:product"]');
  if (product) api.track("Product Viewed", {product_id: product.getAttribute("content")});

  var marks = [25, 50, 75, 100], reached = {};
  function onScroll() {
    var doc = document.documentElement;
    var seen = (window.scrollY + window.innerHeight) / Math.max(doc.scrollHeight, 1) * 100;
    marks.forEach(function (m) {
      if (seen >= m - 0.5 && !reached[m]) { reached[m] = true; api.track("Scroll Depth", {percent: m}); }
    });
  }
  window.addEventListener("scroll", onScroll, {passive: true});

  var reported = false;
  function leave() {
    if (reported) return;
    reported = true;
    api.track("Time On Page", {seconds: Math.round((Date.now() - started) / 1000)});
  }
  window.addEventListener("pagehide", leave);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") leave();
  });
})();
