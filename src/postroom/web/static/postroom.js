// postroom status page: live updates and actions without reloading. No framework, no inline script
// (the Content-Security-Policy allows only this file).
"use strict";

(function () {
  const live = document.getElementById("live");
  const said = document.getElementById("said");
  const csrfMeta = document.querySelector('meta[name="postroom-csrf"]');
  let refreshing = false;
  let again = false;

  function fragmentUrl() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  async function refresh() {
    if (!live) return;
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(fragmentUrl(), { credentials: "same-origin" });
      if (response.ok) {
        // The server escaped every field: this is its HTML, not text from a message.
        live.innerHTML = await response.text();
        live.dataset.refreshed = String(Date.now());
      }
    } catch (e) {
      // the next event or the reconnect tries again
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("action")) return;
    event.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    const headers = { "Accept": "application/json" };
    if (csrfMeta) headers["X-CSRF-Token"] = csrfMeta.content;
    said.textContent = "…";
    try {
      const response = await fetch(form.action, { method: "POST", body: body, headers: headers, credentials: "same-origin" });
      const answer = await response.json();
      said.textContent = answer.ok ? answer.message : (answer.code + ": " + answer.message);
      said.className = answer.ok ? "ok" : "problem";
    } catch (e) {
      said.textContent = "the request failed: " + e;
      said.className = "problem";
    }
    refresh();
  });

  if (live && live.dataset.poll) {
    window.setInterval(refresh, Number(live.dataset.poll) * 1000);
  }

  if (live && window.EventSource) {
    const source = new EventSource("/events");
    source.addEventListener("change", function () {
      // Counted, so a test can tell a live update from a periodic look.
      document.body.dataset.events = String(Number(document.body.dataset.events || 0) + 1);
      refresh();
    });
    source.addEventListener("open", function () { document.body.dataset.live = "1"; });
  }
})();
