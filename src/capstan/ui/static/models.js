/* Model pages: the alias editor of editors. Setting an alias is a PUT with a JSON body ({"version": N}) to the
 * existing API route (capstan.api sends the session's CSRF token); the page reloads on success, otherwise the
 * server's message appears next to the button. Deleting an alias is a plain edit button (capstan.js). */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("alias-form");
    if (!form || !window.capstan) { return; }
    var result = form.querySelector(".action-result");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var alias = form.elements.alias.value.trim();
      var version = parseInt(form.elements.version.value, 10);
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      window.capstan.api("PUT", form.getAttribute("data-url") + encodeURIComponent(alias), { version: version })
        .then(function () { window.location.reload(); })
        .catch(function (error) {
          button.disabled = false;
          result.textContent = error.message;
          result.className = "action-result error";
        });
    });
  });
})();
