// Hazel dashboard live updates (docs/console.md): one EventSource on the
// URL in #live's data-events. `live` and `kill` events carry HTML to swap
// in, `beat` the server's time each second. The "stale" marker shows when
// the stream errors or has been quiet for five seconds, and goes away with
// the next event. The browser reconnects by itself after a dropped stream;
// a stream the server refused (closed) is reopened here every 3 s.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var url = live.getAttribute("data-events");
  var updated = document.getElementById("live-updated");
  var source = null;
  var retry = null;
  var last = Date.now();
  function stale(on) { document.body.classList.toggle("stale", on); }
  function heard() { last = Date.now(); stale(false); }
  function swap(id, html, outer) {
    var el = document.getElementById(id);
    if (!el) { return; }
    if (outer) { el.outerHTML = html; el = document.getElementById(id); } else { el.innerHTML = html; }
    if (window.htmx && el) { window.htmx.process(el); }
  }
  function connect() {
    retry = null;
    source = new EventSource(url);
    source.addEventListener("beat", function (e) { if (updated) { updated.textContent = e.data; } heard(); });
    source.addEventListener("live", function (e) { swap("live", e.data, false); heard(); });
    source.addEventListener("kill", function (e) { swap("kill-switch", e.data, true); heard(); });
    source.onerror = function () {
      stale(true);
      if (source.readyState === EventSource.CLOSED && retry === null) {
        retry = setTimeout(connect, 3000);
      }
    };
  }
  setInterval(function () { if (Date.now() - last > 5000) { stale(true); } }, 1000);
  connect();
})();
