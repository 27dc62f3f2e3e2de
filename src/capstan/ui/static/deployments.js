/* Deployment page: re-reads its live part (server-rendered HTML, /ui/deployments/NAME/live) every few seconds while
 * the tab is visible, and wires the editors' Promote, Roll back and Scale buttons to /api/v1/deployments/NAME/...
 * (with the deployment's project in X-Capstan-Project and the session's CSRF token). */
(function () {
  "use strict";

  var live, actions, note, timer = null, busy = false, again = false, stopped = false;

  function setNote(text) { if (note) { note.textContent = text; } }

  function syncButtons() {
    var state = document.getElementById("live-state");
    if (!state || !actions) { return; }
    var canary = state.getAttribute("data-canary") === "yes";
    var previous = state.getAttribute("data-previous") === "yes";
    var promote = document.getElementById("promote");
    var rollback = document.getElementById("rollback");
    if (promote) { promote.hidden = !canary; }
    if (rollback) { rollback.hidden = !(canary || previous); }
  }

  function schedule() {
    var every = Number(live.getAttribute("data-refresh-ms"));
    if (timer !== null) { window.clearTimeout(timer); }
    timer = stopped || !(every > 0) ? null : window.setTimeout(refresh, every);
  }

  function refresh() {
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    if (stopped) { return; }
    if (document.hidden) { return; }  // resumed by the visibilitychange listener
    if (busy) { again = true; return; }
    busy = true;
    fetch(live.getAttribute("data-url"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 404 || response.status === 403 || response.status === 401) {
          stopped = true;
          setNote(response.status === 404 ? "This deployment no longer exists; refreshing stopped."
            : "Not allowed any more (" + response.status + "); reload the page to log in again.");
          return null;
        }
        if (!response.ok) { throw new Error(response.status + " " + response.statusText); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        live.innerHTML = html;
        syncButtons();
        setNote("");
      })
      .catch(function (error) { setNote("Refresh failed (" + error.message + "); trying again."); })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); } else { schedule(); }
      });
  }

  function call(action, body) {
    var headers = { "Accept": "application/json", "X-Capstan-Project": actions.getAttribute("data-project") };
    var token = window.capstan && window.capstan.csrfToken ? window.capstan.csrfToken() : "";
    if (token) { headers["X-CSRF-Token"] = token; }
    var init = { method: "POST", headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(actions.getAttribute("data-api") + "/" + action, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (payload) {
        if (!response.ok) { throw new Error(payload.message || (response.status + " " + response.statusText)); }
        return payload;
      });
    });
  }

  function act(button, action, body) {
    var result = document.getElementById("action-result");
    button.disabled = true;
    result.textContent = "";
    result.className = "action-result";
    call(action, body)
      .then(function (payload) {
        var revision = payload && payload.deployment ? payload.deployment.revision : "?";
        result.textContent = button.textContent.trim() + ": done (revision " + revision + ").";
        result.className = "action-result ok";
        refresh();
      })
      .catch(function (error) {
        result.textContent = error.message;
        result.className = "action-result error";
      })
      .then(function () { button.disabled = false; });
  }

  function wireActions() {
    if (!actions) { return; }
    actions.querySelectorAll("button.dep-action[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var question = button.getAttribute("data-confirm");
        if (question && !window.confirm(question)) { return; }
        act(button, button.getAttribute("data-action"));
      });
    });
    var form = document.getElementById("scale-form");
    if (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var replicas = Number(document.getElementById("scale-replicas").value);
        act(document.getElementById("scale"), "scale", { replicas: replicas });
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    live = document.getElementById("live");
    actions = document.getElementById("deployment-actions");
    note = document.getElementById("refresh-error");
    if (!live) { return; }
    wireActions();
    syncButtons();
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && timer === null && Number(live.getAttribute("data-refresh-ms")) > 0) { refresh(); }
    });
    schedule();
  });
})();
