/* Capstan web UI: what every page shares. No framework, no build step.
 * capstan.api(method, url, body, project): a same-origin JSON call that sends the session's CSRF token (and
 *   X-Capstan-Project when project is given: routes that act in the request's project, such as /api/v1/jobs).
 * Edit buttons: <button class="edit" data-method="DELETE" data-url="/api/v1/..." data-confirm="..."
 *   data-project="...">  (data-project optional).
 * Runs table: the selected runs enable the compare button. Compare page: "only values that differ". */
(function () {
  "use strict";
  var capstan = window.capstan = window.capstan || {};

  capstan.csrfToken = function () {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  };

  capstan.api = function (method, url, body, project) {
    var headers = { "Accept": "application/json" };
    var token = capstan.csrfToken();
    if (token) { headers["X-CSRF-Token"] = token; }
    if (project) { headers["X-Capstan-Project"] = project; }
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url, init).then(function (response) {
      if (!response.ok) {
        return response.json().catch(function () { return {}; }).then(function (err) {
          var error = new Error(err.message || (response.status + " " + response.statusText));
          error.status = response.status;
          throw error;
        });
      }
      if (response.status === 204) { return null; }
      return response.json();
    });
  };

  function wireEditButtons() {
    document.querySelectorAll("button.edit[data-url]").forEach(function (button) {
      button.addEventListener("click", function () {
        var question = button.getAttribute("data-confirm");
        if (question && !window.confirm(question)) { return; }
        var result = button.parentElement.querySelector(".action-result");
        button.disabled = true;
        capstan.api(button.getAttribute("data-method") || "POST", button.getAttribute("data-url"), undefined,
                    button.getAttribute("data-project") || undefined)
          .then(function () { window.location.reload(); })
          .catch(function (error) {
            button.disabled = false;
            if (result) { result.textContent = error.message; result.className = "action-result error"; }
          });
      });
    });
  }

  function wireCompareSelection() {
    var form = document.getElementById("compare-form");
    if (!form) { return; }
    var button = document.getElementById("compare");
    var count = document.getElementById("selected-count");
    var boxes = document.querySelectorAll('input[type="checkbox"][form="compare-form"]');
    function update() {
      var chosen = 0;
      boxes.forEach(function (box) { if (box.checked) { chosen += 1; } });
      button.disabled = chosen < 2 || chosen > 20;
      count.textContent = chosen === 0 ? "Select two or more runs."
        : chosen + " selected" + (chosen > 20 ? " (at most 20)" : "");
    }
    boxes.forEach(function (box) { box.addEventListener("change", update); });
    update();
  }

  function wireDifferenceToggle() {
    var toggle = document.getElementById("only-differences");
    if (!toggle) { return; }
    toggle.addEventListener("change", function () {
      document.querySelectorAll("table.diff tbody tr[data-key]").forEach(function (row) {
        row.hidden = toggle.checked && !row.classList.contains("differs");
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wireEditButtons();
    wireCompareSelection();
    wireDifferenceToggle();
  });
})();
