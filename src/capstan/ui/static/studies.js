/* Study page: the optimisation-history chart, drawn with plotly.js from the page's data-history attribute
 * (studies_view.History.to_dict: complete and pruned trials' values by trial number, the best value so far, the
 * best trial's number). Complete trials are dots, pruned ones grey crosses (their last reported value), the best so
 * far a step line and the best trial a ringed star. */
(function () {
  "use strict";
  var BLUE = "#1f5fa8", RED = "#c0392b", GREY = "#8a94a3", GOLD = "#b8860b";

  function draw(el) {
    var history = JSON.parse(el.getAttribute("data-history"));
    var traces = [];
    var complete = history.complete, pruned = history.pruned, best = history.best_so_far;
    if (!complete.x.length && !pruned.x.length) {
      el.classList.add("empty-chart");
      el.textContent = "No trial has a value yet.";
      return;
    }
    traces.push({ x: complete.x, y: complete.y, name: "complete", mode: "markers", type: "scatter",
                  marker: { color: BLUE, size: 7 }, hovertemplate: "trial %{x}<br>%{y}<extra>complete</extra>" });
    if (pruned.x.length) {
      traces.push({ x: pruned.x, y: pruned.y, name: "pruned (last value)", mode: "markers", type: "scatter",
                    marker: { color: GREY, size: 8, symbol: "x" },
                    hovertemplate: "trial %{x}<br>%{y}<extra>pruned</extra>" });
    }
    if (best.x.length) {
      traces.push({ x: best.x, y: best.y, name: "best so far", mode: "lines", type: "scatter",
                    line: { color: RED, width: 2, shape: "hv" }, hoverinfo: "skip" });
    }
    if (history.best_trial !== null) {
      var at = complete.x.indexOf(history.best_trial);
      if (at >= 0) {
        traces.push({ x: [complete.x[at]], y: [complete.y[at]], name: "best trial #" + history.best_trial,
                      mode: "markers", type: "scatter", hovertemplate: "best: trial %{x}<br>%{y}<extra></extra>",
                      marker: { color: GOLD, size: 15, symbol: "star", line: { color: "#5a4300", width: 1 } } });
      }
    }
    var numbers = complete.x.concat(pruned.x);  // a margin of half a trial: the first and last points stay whole
    var low = numbers.reduce(function (a, b) { return Math.min(a, b); });
    var high = numbers.reduce(function (a, b) { return Math.max(a, b); });
    var layout = {
      margin: { l: 60, r: 20, t: 10, b: 45 }, height: 320, showlegend: true, legend: { orientation: "h", y: -0.2 },
      xaxis: { title: { text: "trial" }, range: [low - 0.5, high + 0.5] },
      yaxis: { title: { text: history.metric } },
      paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff", font: { color: "#1d2330" }
    };
    window.Plotly.newPlot(el, traces, layout, { responsive: true, displaylogo: false }).then(function () {
      el.setAttribute("data-drawn", String(traces.length));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var el = document.getElementById("history-chart");
    if (el) { draw(el); }
  });
})();
