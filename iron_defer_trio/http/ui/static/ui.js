// Auto-refresh: reload the page's live region (#live) in place, every data-refresh ms.
// The URL, with its filters, stays as it is; the filter form is outside the region, so what
// someone is typing there is never replaced. The checkbox turns it off (remembered).
(function () {
  "use strict";
  var KEY = "iron-defer-ui-refresh";
  function start() {
    var live = document.getElementById("live");
    var toggle = document.getElementById("auto-refresh");
    var stamp = document.getElementById("refreshed");
    if (!live || !toggle) return;
    var every = parseInt(live.getAttribute("data-refresh"), 10) || 2000;
    toggle.checked = window.localStorage.getItem(KEY) !== "off";
    toggle.addEventListener("change", function () {
      window.localStorage.setItem(KEY, toggle.checked ? "on" : "off");
    });
    var busy = false;
    function refresh() {
      if (busy || !toggle.checked || document.hidden) return;
      // Keep the keyboard focus where it is: skip a round while it is inside the region.
      if (live.contains(document.activeElement) && document.activeElement !== document.body) return;
      busy = true;
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (!response.ok || response.redirected) throw new Error("refresh stopped");
          return response.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          if (!fresh) throw new Error("refresh stopped");
          live.innerHTML = fresh.innerHTML;
          if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
        })
        .catch(function () {
          if (stamp) stamp.textContent = "not updating (reload the page)";
        })
        .then(function () { busy = false; });
    }
    window.setInterval(refresh, every);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
