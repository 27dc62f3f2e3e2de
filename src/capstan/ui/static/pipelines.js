/* Pipelines pages. Run page: the DAG's nodes, the step list and the run's status follow the run's event stream
 * (GET /api/v1/views/pipelines/runs/ID/events: "state" events with changed nodes, "end" when the run is over);
 * "Fit" scales the drawing. Step page: the running attempt's log follows its stream (".../log"), and the
 * page reloads when the step moves on (a new attempt, or done). */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var STATE_ORDER = ["succeeded", "cached", "running", "retrying", "queued", "pending", "failed", "skipped",
                     "cancelled"];
  var STEP_DONE = { succeeded: 1, cached: 1, failed: 1, skipped: 1, cancelled: 1 };
  var LOG_KEEP = 1048576; // characters of a followed log kept in the page

  function setState(el, state) {
    el.className = el.className.replace(/\bs-[a-z]+\b/g, "").trim() + " s-" + state;
    el.textContent = state;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // As the server's `ms` filter: UTC, "2024-05-01 12:30:05".
  function formatTime(ms) {
    if (ms === null || ms === undefined) { return ""; }
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }

  // As the server's `span_text`: "850 ms", "12.4s", "3m 05s", "1h 02m".
  function formatSpan(start, end) {
    if (start === null || start === undefined || end === null || end === undefined || end < start) { return ""; }
    var ms = end - start;
    if (ms < 1000) { return ms + " ms"; }
    if (ms < 60000) { return (ms / 1000).toFixed(1) + "s"; }
    var minutes = Math.floor(ms / 60000), seconds = Math.floor(ms / 1000) % 60;
    return minutes < 60 ? minutes + "m " + pad(seconds) + "s" : Math.floor(minutes / 60) + "h " + pad(minutes % 60) + "m";
  }

  function countBadge(state, n) {
    var span = document.createElement("span");
    span.className = "count s-" + state;
    span.textContent = n + " " + state;
    return span;
  }

  // -- run page ---------------------------------------------------------------------------------------------
  function runPage(panel) {
    var nodes = {}, rows = {}, states = {};
    panel.querySelectorAll("svg.dag .node[data-step]").forEach(function (el) {
      nodes[el.getAttribute("data-step")] = el;
      states[el.getAttribute("data-step")] = (el.getAttribute("class").match(/\bs-([a-z]+)/) || [])[1];
    });
    document.querySelectorAll("#steps-table tr[data-step]").forEach(function (row) {
      rows[row.getAttribute("data-step")] = row;
    });
    var fit = document.getElementById("dag-fit");
    if (fit) {
      fit.addEventListener("click", function () {
        var on = panel.classList.toggle("fit");
        fit.setAttribute("aria-pressed", on ? "true" : "false");
        fit.textContent = on ? "Actual size" : "Fit";
      });
    }
    if (panel.getAttribute("data-finished") === "true" || !window.EventSource) { return; }

    function drawBar(el, node) {
      var bar = el.querySelector(".bar");
      if (!bar) { return; }
      var track = bar.querySelector(".track");
      var width = parseFloat(track.getAttribute("width"));
      bar.querySelectorAll(".seg").forEach(function (seg) { seg.remove(); });
      if (!node.total) { return; }
      var x = 0;
      STATE_ORDER.forEach(function (state) {
        var n = node.counts[state];
        if (!n) { return; }
        var w = Math.round(width * n / node.total * 10) / 10;
        var seg = document.createElementNS(SVG, "rect");
        seg.setAttribute("class", "seg s-" + state);
        seg.setAttribute("x", String(x));
        seg.setAttribute("width", String(w));
        seg.setAttribute("height", "7");
        bar.appendChild(seg);
        x += w;
      });
    }

    function updateNode(node) {
      states[node.id] = node.state;
      var el = nodes[node.id];
      if (el) {
        el.setAttribute("class", "node s-" + node.state + (node.fan_out ? " fan-out" : ""));
        el.querySelector("title").textContent = node.title;
        el.querySelector("text.detail").textContent = node.detail;
        el.querySelector("text.mark").textContent = (node.retries ? "↻" + node.retries : "") +
          (node.cached ? " ⚡" : "");
        drawBar(el, node);
      }
      var row = rows[node.id];
      if (row) {
        setState(row.querySelector('[data-field="state"]'), node.state);
        row.querySelector('[data-field="detail"]').textContent = node.detail;
        row.querySelector('[data-field="retries"]').textContent = node.retries ? String(node.retries) : "";
        row.querySelector('[data-field="started"]').textContent = formatTime(node.started_at);
        row.querySelector('[data-field="duration"]').textContent = formatSpan(node.started_at, node.finished_at);
      }
    }

    function updateSummary() {
      var summary = document.getElementById("dag-summary");
      var counts = {}, total = 0;
      Object.keys(states).forEach(function (id) { counts[states[id]] = (counts[states[id]] || 0) + 1; total += 1; });
      summary.textContent = total + " nodes";
      STATE_ORDER.forEach(function (state) {
        if (!counts[state]) { return; }
        summary.appendChild(document.createTextNode(" · "));
        summary.appendChild(countBadge(state, counts[state]));
      });
    }

    function updateRun(run) {
      var badge = document.getElementById("run-status");
      setState(badge, run.status);
      badge.setAttribute("data-status", run.status);
      document.getElementById("run-message").textContent = run.message || "—";
      document.getElementById("run-started").textContent = formatTime(run.started_at);
      document.getElementById("run-duration").textContent = formatSpan(run.started_at, run.finished_at);
    }

    var source = new EventSource(panel.getAttribute("data-events-url"));
    source.addEventListener("state", function (event) {
      var data = JSON.parse(event.data);
      data.nodes.forEach(updateNode);
      updateSummary();
      updateRun(data.run);
    });
    source.addEventListener("end", function (event) {
      source.close();
      updateRun(JSON.parse(event.data));
      var live = document.getElementById("live");
      if (live) { live.remove(); }
      document.querySelectorAll('#run-actions button[data-url$="/cancel"]').forEach(function (b) { b.remove(); });
      panel.setAttribute("data-finished", "true");
    });
  }

  // -- step page --------------------------------------------------------------------------------------------
  function followLog(pre) {
    var atEnd = true;
    pre.addEventListener("scroll", function () {
      atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    });
    var source = new EventSource(pre.getAttribute("data-follow-url"));
    source.addEventListener("reset", function () { pre.textContent = ""; });
    source.addEventListener("log", function (event) {
      var text = pre.textContent + JSON.parse(event.data);
      pre.textContent = text.length > LOG_KEEP ? text.slice(text.length - LOG_KEEP) : text;
      if (atEnd) { pre.scrollTop = pre.scrollHeight; }
    });
    source.addEventListener("end", function () {
      source.close();
      window.location.reload(); // the finished attempt's exit code, duration and peak memory
    });
  }

  function watchStep(live) {
    var state = live.getAttribute("data-state"), attempt = live.getAttribute("data-attempt");
    if (live.getAttribute("data-finished") === "true" || STEP_DONE[state] || !window.EventSource) { return; }
    var source = new EventSource(live.getAttribute("data-events-url"));
    function changed(step) {
      return step && (step.state !== state || String(step.attempt) !== attempt);
    }
    source.addEventListener("state", function (event) {
      if (changed(JSON.parse(event.data).step)) { source.close(); window.location.reload(); }
    });
    source.addEventListener("end", function () { source.close(); window.location.reload(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = document.getElementById("dag-panel");
    if (panel) { runPage(panel); }
    var pre = document.querySelector("pre.log[data-follow-url]");
    if (pre) {
      followLog(pre);
      return;
    }
    var live = document.getElementById("step-live");
    if (live) { watchStep(live); }
  });
})();
