// The report page: draw the daily chart (uPlot, served from our static files) and re-run the
// report when a filter changes.
(function () {
  "use strict";

  function money(v) { return v == null ? "" : "$" + v.toFixed(2); }
  function count(v) { return v == null ? "" : Math.round(v).toLocaleString("en-US"); }

  function drawChart() {
    var source = document.getElementById("chart-data");
    var target = document.getElementById("chart");
    if (!source || !target || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    var bars = uPlot.paths.bars({ size: [0.7, 60] });
    var options = {
      width: Math.max(320, target.clientWidth),
      height: 300,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      // Half a day of room on each side, so the first and last bars are drawn whole.
      scales: { x: { time: true, range: function (u, min, max) { return [min - 43200, max + 43200]; } },
                usd: { auto: true, range: function (u, min, max) { return [0, Math.max(max, 0.01) * 1.1]; } },
                tokens: { auto: true, range: function (u, min, max) { return [0, Math.max(max, 1) * 1.1]; } } },
      series: [
        { label: "Day", value: "{YYYY}-{MM}-{DD}" },
        { label: "Spend (USD)", scale: "usd", value: function (u, v) { return money(v); },
          stroke: "#2f6fdb", fill: "rgba(47,111,219,0.35)", paths: bars, points: { show: false } },
        { label: "Tokens", scale: "tokens", value: function (u, v) { return count(v); },
          stroke: "#e07a1f", width: 2 },
      ],
      axes: [
        { values: "{MM}-{DD}" },
        { scale: "usd", values: function (u, ticks) { return ticks.map(money); }, size: 70 },
        { scale: "tokens", side: 1, grid: { show: false }, size: 70,
          values: function (u, ticks) { return ticks.map(count); } },
      ],
    };
    var chart = new uPlot(options, [data.days, data.cost, data.tokens], target);
    target.dataset.drawn = String(data.days.length);
    window.addEventListener("resize", function () {
      chart.setSize({ width: Math.max(320, target.clientWidth), height: 300 });
    });
  }

  function autoSubmit() {
    var form = document.getElementById("filters");
    if (!form) return;
    form.addEventListener("change", function (event) {
      if (event.target.matches("select, input[type=date]") && form.checkValidity()) form.submit();
    });
  }

  drawChart();
  autoSubmit();
})();
