/* Metric charts, drawn with plotly.js (served from the installed plotly package).
 *
 * capstan.charts.render(el, {runs: [{run_id, name}], key, x, smoothing}) draws one metric of several runs
 *   overlaid and returns a promise of a chart handle {setSmoothing(w), reload()}. The points come downsampled
 *   from GET /api/v1/metrics/series (about one bucket per pixel of the chart's width, see docs/ui-charts.md):
 *   each line is the buckets' means, the shaded band their min and max (drawn only where a bucket merges several
 *   points), so a spike stays visible at any zoom. Zooming refetches the visible window, so detail appears;
 *   double-click (autoscale) goes back to the whole series. x is "step", "time" or "relative" (seconds since the
 *   series' first point); NaN and infinite values are marked with an x where they fall.
 * capstan.charts.render(el, series, options): the drawing call alone, with ready series
 *   {name, x: [...], y: [...], low?: [...], high?: [...], count?: [...]}; options: {xTitle, yTitle, xType,
 *   smoothing}.
 * capstan.charts.smooth(values, weight, counts): the debiased exponential moving average of TensorBoard's slider;
 *   value i weighs as counts[i] points (1 when counts is omitted), as capstan.tracking.series.smooth does.
 * Every .chart-panel on a page (see templates/chart_panel.html) is wired to render. */
(function () {
  "use strict";
  var capstan = window.capstan = window.capstan || {};
  var charts = capstan.charts = capstan.charts || {};
  var COLORS = ["#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b8860b"];
  var RUNS_PER_CALL = 20;  // the API's limit of run_id per request
  var MIN_POINTS = 200, MAX_POINTS = 2000;
  var COL = { x: 0, y: 1, low: 2, high: 3, count: 4, nonfinite: 5 };

  charts.smooth = function (values, weight, counts) {
    if (!weight) { return values; }
    var out = [], average = 0, mass = 0;
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      var n = counts ? counts[i] : 1;
      if (v === null || !isFinite(v) || n <= 0) { out.push(v === undefined ? null : v); continue; }
      var keep = Math.pow(weight, n);
      average = keep * average + (1 - keep) * v;
      mass = keep * mass + (1 - keep);
      out.push(average / mass);
    }
    return out;
  };

  function traces(series, smoothing) {
    var out = [];
    series.forEach(function (s, index) {
      var color = COLORS[index % COLORS.length];
      var merged = s.count ? s.count.some(function (c) { return c > 1; }) : Boolean(s.low && s.high);
      if (s.low && s.high && merged) {  // one closed shape: along the top, back along the bottom
        var top = [], bottom = [], xs = [], back = [];
        for (var i = 0; i < s.x.length; i++) {
          if (s.low[i] === null || s.high[i] === null) { continue; }
          xs.push(s.x[i]); top.push(s.high[i]); back.unshift(s.x[i]); bottom.unshift(s.low[i]);
        }
        out.push({ x: xs.concat(back), y: top.concat(bottom), mode: "lines", fill: "toself", line: { width: 0 },
                   fillcolor: color + "33", hoverinfo: "skip", showlegend: false, legendgroup: s.name });
      }
      var y = charts.smooth(s.y, smoothing || 0, s.finite);
      out.push({ x: s.x, y: y, name: s.name, mode: s.x.length <= 50 ? "lines+markers" : "lines",
                 marker: { size: 5, color: color }, line: { color: color, width: 1.5 }, legendgroup: s.name,
                 connectgaps: false });
      if (s.bad && s.bad.x.length) {
        out.push({ x: s.bad.x, y: s.bad.y, text: s.bad.text, mode: "markers", name: s.name + " (NaN/inf)",
                   marker: { symbol: "x", size: 8, color: color }, hovertemplate: "%{text}<extra></extra>",
                   showlegend: false, legendgroup: s.name });
      }
    });
    return out;
  }

  function draw(el, series, options) {
    var xaxis = { title: { text: options.xTitle || "" }, type: options.xType || "linear" };
    if (options.range) { xaxis.range = options.range; } else { xaxis.autorange = true; }
    var layout = {
      margin: { l: 60, r: 20, t: 10, b: 45 }, height: 320, showlegend: series.length > 1,
      xaxis: xaxis, yaxis: { title: { text: options.yTitle || "" } }, uirevision: options.uirevision,
      paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff", font: { color: "#1d2330" }
    };
    return window.Plotly.react(el, traces(series, options.smoothing), layout,
                               { responsive: true, displaylogo: false });
  }

  // -- the series API ---------------------------------------------------------------------------------------
  function toSeries(body, name, axis) {
    var scale = axis === "relative" ? 1 / 1000 : 1;  // the API speaks milliseconds
    var s = { name: name, x: [], y: [], low: [], high: [], count: [], finite: [], points: body.points,
              bad: { x: [], y: [], text: [] } };
    var last = null;
    body.buckets.forEach(function (b) {
      var x = b[COL.x] * scale;
      s.x.push(x); s.y.push(b[COL.y]); s.low.push(b[COL.low]); s.high.push(b[COL.high]);
      s.count.push(b[COL.count]); s.finite.push(b[COL.count] - b[COL.nonfinite]);
      if (b[COL.y] !== null) { last = b[COL.y]; }
      if (b[COL.nonfinite] > 0) {
        s.bad.x.push(x); s.bad.y.push(last === null ? 0 : last);
        s.bad.text.push(b[COL.nonfinite] + " NaN/inf of " + b[COL.count] + " points");
      }
    });
    return s;
  }

  charts.fetchSeries = function (runs, key, axis, windowMs, maxPoints) {
    var calls = [];
    for (var start = 0; start < runs.length; start += RUNS_PER_CALL) {
      var part = runs.slice(start, start + RUNS_PER_CALL);
      var query = part.map(function (r) { return "run_id=" + encodeURIComponent(r.run_id); });
      query.push("key=" + encodeURIComponent(key), "x=" + axis, "max_points=" + maxPoints);
      if (windowMs) { query.push("x_min=" + windowMs[0], "x_max=" + windowMs[1]); }
      calls.push(capstan.api("GET", "/api/v1/metrics/series?" + query.join("&")).then(function (body) {
        return body.series;
      }));
    }
    return Promise.all(calls).then(function (parts) {
      var all = [].concat.apply([], parts);
      return all.map(function (body, i) { return toSeries(body, runs[i].name || runs[i].run_id, axis); });
    });
  };

  // A date-axis range value ("2024-05-01 12:00:00.5", UTC as plotly draws epoch milliseconds) in ms.
  function dateMs(value) {
    if (typeof value === "number") { return value; }
    var text = String(value).replace(" ", "T");
    return Date.parse(text.indexOf("T") < 0 ? text + "T00:00:00Z" : text + "Z");
  }

  // The zoomed x range in the API's units (ms for time axes), or null for the whole series.
  function windowOf(range, axis) {
    if (!range) { return null; }
    if (axis === "time") { return [Math.floor(dateMs(range[0])), Math.ceil(dateMs(range[1]))]; }
    var scale = axis === "relative" ? 1000 : 1;
    return [Math.floor(range[0] * scale), Math.ceil(range[1] * scale)];
  }

  function plot(el, spec) {
    var axis = spec.x || "step";
    var state = { smoothing: spec.smoothing || 0, series: [], range: null, asked: 0, shown: 0 };
    var options = function () {
      return { xTitle: axis === "relative" ? "seconds since the first point" : axis, yTitle: spec.key,
               xType: axis === "time" ? "date" : "linear", smoothing: state.smoothing, range: state.range,
               uirevision: spec.key + "/" + axis };
    };
    var maxPoints = Math.max(MIN_POINTS, Math.min(MAX_POINTS, Math.round(el.clientWidth || 1000)));

    function load() {
      var ticket = ++state.asked;
      return charts.fetchSeries(spec.runs, spec.key, axis, windowOf(state.range, axis), maxPoints)
        .then(function (series) {
          // An answer older than one already drawn, or for a chart since replaced on this element, is dropped.
          if (ticket < state.shown || el.capstanChart !== handle) { return handle; }
          state.shown = ticket;
          state.series = series.filter(function (s) { return s.x.length > 0; });
          return draw(el, state.series, options()).then(function () { return handle; });
        });
    }

    var timer = null;
    if (el.removeAllListeners) { el.removeAllListeners("plotly_relayout"); }  // a chart drawn here before
    var handle = {
      setSmoothing: function (weight) { state.smoothing = weight; return draw(el, state.series, options()); },
      reload: load,
      series: function () { return state.series; }
    };
    el.capstanChart = handle;
    var first = load();
    first.then(function () {
      el.on("plotly_relayout", function (event) {
        var next;
        if (event["xaxis.autorange"]) { next = null; }
        else if ("xaxis.range[0]" in event) { next = [event["xaxis.range[0]"], event["xaxis.range[1]"]]; }
        else if (event["xaxis.range"]) { next = event["xaxis.range"]; }
        else { return; }
        state.range = next;
        clearTimeout(timer);
        timer = setTimeout(function () {
          load().catch(function (error) { if (spec.onError) { spec.onError(error); } });
        }, 150);
      });
    }, function () { /* load's caller sees the error */ });
    return first;
  }

  charts.render = function (el, what, options) {
    if (Array.isArray(what)) { return draw(el, what, options || {}); }
    return plot(el, what);
  };

  // -- the chart panel of the run and compare pages ---------------------------------------------------------
  function wirePanel(panel) {
    var runs = JSON.parse(panel.getAttribute("data-runs") || "[]");
    var keySelect = panel.querySelector(".chart-key");
    var axisSelect = panel.querySelector(".chart-x");
    var smoothing = panel.querySelector(".chart-smoothing");
    var note = panel.querySelector(".chart-note");
    var target = panel.querySelector(".chart");
    var chart = null;

    function failed(error) { note.textContent = error.message; }

    function load() {
      note.textContent = "Loading…";
      chart = null;
      charts.render(target, { runs: runs, key: keySelect.value, x: axisSelect.value,
                              smoothing: parseFloat(smoothing.value), onError: failed })
        .then(function (handle) {
          chart = handle;
          var merged = handle.series().some(function (s) { return s.points > s.x.length; });
          note.textContent = merged ? "Downsampled on the server: the line is each bucket's mean, the band its " +
            "min and max; zoom in for detail." : "";
        }).catch(failed);
    }

    keySelect.addEventListener("change", load);
    axisSelect.addEventListener("change", load);
    smoothing.addEventListener("input", function () {
      if (chart) { chart.setSmoothing(parseFloat(smoothing.value)); }
    });
    load();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.Plotly) { return; }
    document.querySelectorAll(".chart-panel").forEach(wirePanel);
  });
})();
