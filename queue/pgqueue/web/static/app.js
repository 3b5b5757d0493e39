// pgqueue dashboard: live counts (polled) and "select all" for bulk actions. No dependencies.
(function () {
  "use strict";
  var live = document.getElementById("live-counts");
  function refresh() {
    if (!live) return;
    fetch(live.getAttribute("data-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        var totals = data.totals || {};
        var parts = [];
        ["available", "executing", "retryable", "scheduled"].forEach(function (s) {
          parts.push(s + " " + (totals[s] || 0));
        });
        live.textContent = parts.join(" · ");
        document.querySelectorAll("[data-count]").forEach(function (el) {
          var state = el.getAttribute("data-count");
          var estimated = (data.estimated || []).indexOf(state) >= 0;
          el.textContent = (estimated ? "≈ " : "") + (totals[state] || 0);
        });
      })
      .catch(function () { /* the next tick tries again */ });
  }
  refresh();
  setInterval(refresh, 3000);
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();
