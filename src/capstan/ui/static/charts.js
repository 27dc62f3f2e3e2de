/* Metric charts, drawn with plotly.js (served from the installed plotly package).
 *
 * capstan.charts.render(el, series, options): the one drawing entry point. `series` is a list of
 *   {name, x: [...], y: [...], low?: [...], high?: [...]}; when low/high are given they are drawn as a band
 *   around the line (downsampled series keep each bucket's min and max so spikes stay visible).
 *   options: {xTitle, yTitle, smoothing (0..1, exponential moving average of y)}.
 * capstan.charts.fetchSeries(runId, key, axis): the points of one run's metric as a series (it reads the metric
 *   history API, at most MAX_POINTS points; a server-side downsampled series API replaces it when present).
 * Every .chart-panel on a page (see templates/chart_panel.html) is wired to these two. */
(function () {
  "use strict";
  var capstan = window.capstan = window.capstan || {};
  var charts = capstan.charts = capstan.charts || {};
  var MAX_POINTS = 10000;
  var COLORS = ["#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b8860b"];

  charts.smooth = function (values, weight) {
    if (!weight) { return values; }
    var out = [], last = null, debias = 0;
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (v === null || !isFinite(v)) { out.push(null); continue; }
      last = last === null ? 0 : last;
      last = last * weight + (1 - weight) * v;
      debias = debias * weight + (1 - weight);
      out.push(last / debias);
    }
    return out;
  };

  charts.render = function (el, series, options) {
    options = options || {};
    var traces = [];
    series.forEach(function (s, index) {
      var color = COLORS[index % COLORS.length];
      if (s.low && s.high) {
        traces.push({ x: s.x, y: s.high, mode: "lines", line: { width: 0, color: color }, hoverinfo: "skip",
                      showlegend: false, legendgroup: s.name });
        traces.push({ x: s.x, y: s.low, mode: "lines", line: { width: 0, color: color }, fill: "tonexty",
                      fillcolor: color + "33", hoverinfo: "skip", showlegend: false, legendgroup: s.name });
      }
      traces.push({ x: s.x, y: charts.smooth(s.y, options.smoothing || 0), name: s.name,
                    mode: s.x.length <= 50 ? "lines+markers" : "lines", marker: { size: 5, color: color },
                    line: { color: color, width: 1.5 }, legendgroup: s.name });
    });
    var layout = {
      margin: { l: 60, r: 20, t: 10, b: 45 }, height: 320, showlegend: series.length > 1,
      xaxis: { title: { text: options.xTitle || "" }, type: options.xType || "linear" },
      yaxis: { title: { text: options.yTitle || "" } },
      paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff", font: { color: "#1d2330" }
    };
    return window.Plotly.react(el, traces, layout, { responsive: true, displaylogo: false });
  };

  charts.fetchSeries = function (runId, key, axis) {
    var url = "/api/v1/runs/" + encodeURIComponent(runId) + "/metrics/" + encodeURIComponent(key) +
      "?max_results=" + MAX_POINTS;
    return capstan.api("GET", url).then(function (body) {
      var points = body.metrics || [];
      var x = points.map(function (p) { return axis === "time" ? new Date(p.timestamp) : p.step; });
      var y = points.map(function (p) { return typeof p.value === "number" ? p.value : null; });
      return { x: x, y: y, truncated: Boolean(body.next_page_token) };
    });
  };

  function wirePanel(panel) {
    var runs = JSON.parse(panel.getAttribute("data-runs") || "[]");
    var keySelect = panel.querySelector(".chart-key");
    var axisSelect = panel.querySelector(".chart-x");
    var smoothing = panel.querySelector(".chart-smoothing");
    var note = panel.querySelector(".chart-note");
    var target = panel.querySelector(".chart");
    var loaded = [];

    function draw() {
      charts.render(target, loaded, { xTitle: axisSelect.value, yTitle: keySelect.value,
                                      xType: axisSelect.value === "time" ? "date" : "linear",
                                      smoothing: parseFloat(smoothing.value) });
    }

    function load() {
      var key = keySelect.value, axis = axisSelect.value;
      note.textContent = "Loading…";
      Promise.all(runs.map(function (run) {
        return charts.fetchSeries(run.run_id, key, axis).then(function (s) { s.name = run.name; return s; });
      })).then(function (series) {
        loaded = series.filter(function (s) { return s.x.length > 0; });
        var cut = series.some(function (s) { return s.truncated; });
        note.textContent = cut ? "Showing the first " + MAX_POINTS + " points of each run." : "";
        draw();
      }).catch(function (error) { note.textContent = error.message; });
    }

    keySelect.addEventListener("change", load);
    axisSelect.addEventListener("change", load);
    smoothing.addEventListener("input", draw);
    load();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.Plotly) { return; }
    document.querySelectorAll(".chart-panel").forEach(wirePanel);
  });
})();
