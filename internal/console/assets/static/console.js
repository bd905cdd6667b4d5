// Live updates without a framework: the overview's numbers and the dead
// letters' match count are refreshed every few seconds from the JSON API.
(function () {
  "use strict";
  var page = document.body.dataset.page;
  function get(url, then) {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (v) { if (v) then(v); })
      .catch(function () {});
  }
  if (page === "overview") {
    setInterval(function () {
      get("/api/overview", function (o) {
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var f = el.dataset.live, v = o[f];
          if (f === "at") v = new Date(v).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
          else if (f === "oldest_seconds") v = Math.round(v);
          if (v !== undefined) el.textContent = v;
        });
      });
    }, 2000);
  }
  var count = document.querySelector("[data-dlq-count]");
  if (count) {
    setInterval(function () {
      get("/api/dlq?size=0&" + count.dataset.dlqCount, function (r) { count.textContent = r.matched; });
    }, 3000);
  }
  var all = document.getElementById("all-rows");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=seq]").forEach(function (c) { c.checked = all.checked; });
    });
  }
})();
