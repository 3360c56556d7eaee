// flow-tracker dashboard: live refresh (pausable) without inline script.
// Pages that change by themselves carry data-refresh="<seconds>" on <body>;
// this fetches the same URL again and swaps <main>, keeping open <details>.
(function () {
  "use strict";
  var KEY = "flow-tracker:paused";
  var body = document.body;
  var seconds = parseInt(body.getAttribute("data-refresh") || "0", 10);
  var box = document.getElementById("ft-live");
  var label = document.getElementById("ft-live-label");
  var button = document.getElementById("ft-pause");
  var timer = null;

  function paused() {
    try { return window.localStorage.getItem(KEY) === "1"; } catch (e) { return false; }
  }
  function setPaused(value) {
    try { window.localStorage.setItem(KEY, value ? "1" : "0"); } catch (e) { /* private mode */ }
    show();
    schedule();
  }
  function show() {
    if (!box) { return; }
    box.hidden = !(seconds > 0);
    box.classList.toggle("paused", paused());
    label.textContent = paused() ? "Paused" : "Live";
    button.textContent = paused() ? "Resume" : "Pause";
  }
  function openDetails(root) {
    var ids = [];
    root.querySelectorAll("details[open]").forEach(function (d, i) {
      ids.push(d.closest("[id]") ? d.closest("[id]").id + ":" + i : String(i));
    });
    return ids;
  }
  function refresh() {
    if (paused() || document.hidden) { schedule(); return; }
    var main = document.getElementById("ft-main");
    var keep = openDetails(main);
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "flow-tracker" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { schedule(); return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("ft-main");
        if (!fresh) { schedule(); return; }
        fresh.querySelectorAll("details").forEach(function (d, i) {
          var id = (d.closest("[id]") ? d.closest("[id]").id + ":" + i : String(i));
          if (keep.indexOf(id) >= 0) { d.open = true; }
        });
        main.replaceWith(document.adoptNode(fresh));
        seconds = parseInt(doc.body.getAttribute("data-refresh") || "0", 10);
        body.setAttribute("data-refresh", String(seconds));
        show();
        schedule();
      })
      .catch(function () { schedule(); });
  }
  function schedule() {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (seconds > 0 && !paused()) { timer = window.setTimeout(refresh, seconds * 1000); }
  }
  if (button) { button.addEventListener("click", function () { setPaused(!paused()); }); }
  show();
  schedule();
})();

// "Copy" buttons: data-copy-url="<url>" puts the text served there on the clipboard
// (a workflow run's Mermaid text). Delegated: live refresh replaces <main>.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy-url]") : null;
    if (!button) { return; }
    fetch(button.getAttribute("data-copy-url"), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error(String(r.status))); })
      .then(function (text) { return navigator.clipboard.writeText(text); })
      .then(function () { button.textContent = "Copied"; },
            function () { button.textContent = "Copy failed: use Download"; });
  });
})();
