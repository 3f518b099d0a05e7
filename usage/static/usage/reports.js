// The report pages: the daily chart (uPlot 1.6.32, MIT licence, vendored from npm under
// vendor/ with its licence: no CDN), the stacked chart's group-by switch (it re-reads the page), type-to-filter
// checkbox lists, and live updates over the page's WebSocket (usage/live.py). The other charts
// are server-rendered SVG (usage/charts.py says why); their tooltips are formatted on the
// server by the one rule of usage/amounts.py, which `money` below repeats for uPlot's axis.
(function () {
  "use strict";

  // usage/amounts.py usd_display: cents from a cent up, two significant digits below.
  function money(v) {
    if (v == null || isNaN(v)) return "";
    var sign = v < 0 ? "-" : "", a = Math.abs(v);
    if (a === 0 || a >= 0.01) {
      return sign + "$" + a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    }
    var decimals = Math.min(10, 1 - Math.floor(Math.log10(a)));
    var shown = Number(a.toFixed(decimals));
    if (shown >= 0.01) return sign + "$0.01";
    return sign + "$" + shown.toFixed(decimals);
  }
  window.gatewayMoney = money;
  function count(v) { return v == null ? "" : Math.round(v).toLocaleString("en-US"); }

  var chart = null;
  function drawChart() {
    var source = document.getElementById("chart-data");
    var target = document.getElementById("chart");
    if (!source || !target || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (chart) { chart.destroy(); chart = null; }
    var bars = uPlot.paths.bars({ size: [0.7, 60] });
    var options = {
      width: Math.max(280, target.clientWidth),
      height: 300,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      // Half a day of room on each side, so the first and last bars are drawn whole.
      scales: { x: { time: true, range: function (u, min, max) { return [min - 43200, max + 43200]; } },
                usd: { auto: true, range: function (u, min, max) { return [0, Math.max(max, 0.0001) * 1.1]; } },
                tokens: { auto: true, range: function (u, min, max) { return [0, Math.max(max, 1) * 1.1]; } } },
      series: [
        { label: "Day", value: "{YYYY}-{MM}-{DD}" },
        // The legend shows the server's text for the day (the exact Decimal, formatted once).
        { label: "Spend (USD)", scale: "usd",
          value: function (u, v, s, i) { return i == null ? money(v) : data.cost_text[i]; },
          stroke: "#2f6fdb", fill: "rgba(47,111,219,0.35)", paths: bars, points: { show: false } },
        { label: "Tokens", scale: "tokens", value: function (u, v) { return count(v); },
          stroke: "#e07a1f", width: 2 },
      ],
      axes: [
        { values: "{MM}-{DD}" },
        { scale: "usd", values: function (u, ticks) { return ticks.map(money); }, size: 70 },
        { scale: "tokens", side: 1, grid: { show: false }, size: 60,
          values: function (u, ticks) { return ticks.map(count); } },
      ],
    };
    chart = new uPlot(options, [data.days, data.cost, data.tokens], target);
    target.dataset.drawn = String(data.days.length);
  }
  window.addEventListener("resize", function () {
    var target = document.getElementById("chart");
    if (chart && target) chart.setSize({ width: Math.max(280, target.clientWidth), height: 300 });
  });

  // Type-to-filter checkbox lists: the search box hides the choices that do not match;
  // ArrowDown moves to the first shown choice, Escape clears the box.
  function pickers() {
    document.querySelectorAll(".pick-field").forEach(function (field) {
      var search = field.querySelector(".pick-search");
      var labels = Array.prototype.slice.call(field.querySelectorAll(".pick-box label"));
      var legendCount = field.querySelector("legend .count");
      search.hidden = false;
      function filter() {
        var q = search.value.trim().toLowerCase();
        labels.forEach(function (label) {
          var row = label.parentElement;
          row.hidden = q !== "" && label.textContent.toLowerCase().indexOf(q) === -1;
        });
      }
      search.addEventListener("input", filter);
      search.addEventListener("keydown", function (event) {
        if (event.key === "ArrowDown") {
          var first = labels.filter(function (l) { return !l.parentElement.hidden; })[0];
          if (first) { event.preventDefault(); first.querySelector("input").focus(); }
        } else if (event.key === "Escape") {
          search.value = ""; filter();
        } else if (event.key === "Enter") {
          event.preventDefault();  // Enter in the filter box filters; Apply submits
        }
      });
      field.addEventListener("change", function () {
        var n = field.querySelectorAll("input[type=checkbox]:checked").length;
        var legend = field.querySelector("legend");
        if (!legendCount) { legendCount = document.createElement("span"); legendCount.className = "count"; legend.appendChild(legendCount); }
        legendCount.textContent = n ? " (" + n + ")" : "";
      });
    });
  }

  function autoSubmit() {
    var form = document.getElementById("filters");
    if (!form) return;
    form.addEventListener("change", function (event) {
      if (event.target.matches("select, input[type=date]") && form.checkValidity()) form.submit();
    });
    // The stacked chart's switch sits outside the form (form="filters"): choosing re-reads.
    document.addEventListener("change", function (event) {
      if (event.target.matches("input[name=stack]") && form.checkValidity()) form.submit();
    });
  }

  // Live updates: the server sends the re-rendered body each time the ledger grows.
  function live() {
    var body = document.querySelector(".live-body[data-live]");
    if (!body || !("WebSocket" in window)) return;
    var tries = 0, updates = 0;
    function connect() {
      var socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + body.dataset.live);
      socket.onopen = function () { tries = 0; body.dataset.liveState = "open"; };
      socket.onmessage = function (event) {
        var message = JSON.parse(event.data);
        if (!message.html) return;
        body.innerHTML = message.html;
        updates += 1;
        body.dataset.liveUpdates = String(updates);
        if (message.newest) body.dataset.newest = String(message.newest);
        drawChart();
      };
      socket.onclose = function () {
        body.dataset.liveState = "closed";
        // Bounded backoff: 1, 2, 4 ... 30 s.
        tries += 1;
        setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, tries - 1)));
      };
    }
    connect();
  }

  drawChart();
  pickers();
  autoSubmit();
  live();
})();
