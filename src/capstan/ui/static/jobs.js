/* Training job page: a worker's logs, followed live while the job runs.
 *
 * The logs come from GET /api/v1/jobs/ID/logs?worker=W[&attempt=K]&cursor=C (text). Each answer carries
 * X-Capstan-Log-Cursor (passed back next time: only lines written since come back, and after a restart the rest of
 * the old attempt, then the new one), X-Capstan-Attempt and X-Capstan-Job-State. While the job may still change the
 * page asks again every second; once it has ended, it reads until an answer is empty (everything was left) and stops.
 * When the state or the attempt changes, the page's own HTML is fetched again and its head (state, reason, facts)
 * and attempts table are swapped in, so they are rendered by the server only. At most MAX_LINES lines are kept. */
(function () {
  "use strict";
  var TERMINAL = { Succeeded: true, Failed: true, Cancelled: true };
  var POLL_MS = 1000, RETRY_MS = 3000, MAX_LINES = 5000;

  function start() {
    var section = document.getElementById("logs");
    if (!section) { return; }
    var url = section.getAttribute("data-logs-url");
    var project = section.getAttribute("data-project");
    var workerSelect = document.getElementById("log-worker");
    var attemptSelect = document.getElementById("log-attempt");
    var pre = document.getElementById("log-text");
    var status = document.getElementById("log-status");
    var head = document.getElementById("job-head");
    var known = { state: head.getAttribute("data-state"), attempt: head.getAttribute("data-attempt") };
    var generation = 0, cursor = "", shownAttempt = null, timer = null, chunks = [], lineCount = 0;

    function say(text, isError) {
      status.textContent = text;
      status.className = isError ? "error" : "hint";
    }

    function append(text) {
      if (!text) { return; }
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var node = document.createTextNode(text);
      var count = (text.match(/\n/g) || []).length;
      pre.appendChild(node);
      chunks.push({ node: node, lines: count });
      lineCount += count;
      while (lineCount > MAX_LINES && chunks.length > 1) {
        var old = chunks.shift();
        pre.removeChild(old.node);
        lineCount -= old.lines;
        pre.setAttribute("data-trimmed", "true");
      }
      if (atBottom) { pre.scrollTop = pre.scrollHeight; }
    }

    function restart() {
      generation += 1;
      window.clearTimeout(timer);
      cursor = "";
      shownAttempt = null;
      chunks = [];
      lineCount = 0;
      pre.textContent = "";
      pre.removeAttribute("data-trimmed");
      say("Loading…", false);
      poll(generation);
    }

    function poll(gen) {
      var params = new URLSearchParams({ worker: workerSelect.value });
      if (attemptSelect.value) { params.set("attempt", attemptSelect.value); }
      if (cursor) { params.set("cursor", cursor); }
      fetch(url + "?" + params.toString(), {
        headers: { "Accept": "text/plain", "X-Capstan-Project": project }, credentials: "same-origin"
      }).then(function (response) {
        if (!response.ok) {
          return response.json().catch(function () { return {}; }).then(function (err) {
            var error = new Error(err.message || (response.status + " " + response.statusText));
            error.status = response.status;
            throw error;
          });
        }
        return response.text().then(function (text) { return { response: response, text: text }; });
      }).then(function (answer) {
        if (gen !== generation) { return; }
        var headers = answer.response.headers;
        var attempt = headers.get("X-Capstan-Attempt") || "0";
        var state = headers.get("X-Capstan-Job-State") || known.state;
        cursor = headers.get("X-Capstan-Log-Cursor") || "";
        if (answer.text && shownAttempt !== null && attempt !== shownAttempt && !attemptSelect.value) {
          append("──── attempt " + attempt + " ────\n");
        }
        if (answer.text) { shownAttempt = attempt; }
        append(answer.text);
        noticeChange(state, attempt);
        var ended = TERMINAL[state] === true;
        if (!ended || answer.text) {
          timer = window.setTimeout(function () { poll(gen); }, ended ? 0 : POLL_MS);
        }
        describe(state, attempt, ended && !answer.text);
      }).catch(function (error) {
        if (gen !== generation) { return; }
        say("Could not read the logs: " + error.message, true);
        if (!error.status || error.status >= 500) {  // the server or the network: try again
          timer = window.setTimeout(function () { poll(gen); }, RETRY_MS);
        }
      });
    }

    function describe(state, attempt, finished) {
      var which = "worker " + workerSelect.value + (attempt !== "0" ? ", attempt " + attempt : "");
      var empty = lineCount === 0 ? " No output yet." : "";
      if (attempt === "0") {
        say("No attempt has started yet; waiting for the queue to admit the job.", false);
      } else if (finished) {
        say("Job " + state + ": all output of " + which + " is shown." + empty, false);
      } else if (attemptSelect.value) {
        say("Showing " + which + "." + empty, false);
      } else {
        say("Following " + which + " (job " + state + ")…" + empty, false);
      }
    }

    function noticeChange(state, attempt) {
      var newAttempt = attempt !== "0" && Number(attempt) > Number(known.attempt);
      if (state === known.state && !newAttempt) { return; }
      known = { state: state, attempt: newAttempt ? attempt : known.attempt };
      refreshSummary();
    }

    function refreshSummary() {
      fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var fresh = new DOMParser().parseFromString(html, "text/html");
          ["job-head", "attempts"].forEach(function (id) {
            var now = document.getElementById(id), next = fresh.getElementById(id);
            if (now && next) { now.replaceWith(document.importNode(next, true)); }
          });
          var nextHead = document.getElementById("job-head");
          known = { state: nextHead.getAttribute("data-state"), attempt: nextHead.getAttribute("data-attempt") };
          var actions = document.getElementById("job-actions");
          if (actions && TERMINAL[known.state]) { actions.remove(); }
          var options = fresh.getElementById("log-attempt");
          if (options) {
            var chosen = attemptSelect.value;
            attemptSelect.innerHTML = options.innerHTML;
            attemptSelect.value = chosen;
          }
        })
        .catch(function () { /* the next change tries again */ });
    }

    workerSelect.addEventListener("change", restart);
    attemptSelect.addEventListener("change", restart);
    restart();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
