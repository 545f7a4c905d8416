// The monitoring page's trend charts: each KPI over the window with its objective as a dashed line,
// and a sparkline per key family, drawn by uPlot (public/vendor/uplot, MIT, pinned: docs/monitoring.md)
// from the `series` of /api/metrics. Times are Dakar's (Africa/Dakar), labels French. Each chart's
// container says in data-points how many points it drew (for tests), and in aria-label what it shows.
"use strict";

(function () {
  var TZ = "Africa/Dakar";
  var COLORS = { line: "#0969da", second: "#8250df", third: "#57606a", bad: "#b42318", objective: "#b42318" };
  var plots = [];

  function formatter(options) {
    return new Intl.DateTimeFormat("fr-FR", Object.assign({ timeZone: TZ }, options));
  }
  var TICKS = {
    60: formatter({ hour: "2-digit", minute: "2-digit" }),
    300: formatter({ hour: "2-digit", minute: "2-digit" }),
    3600: formatter({ weekday: "short", day: "numeric" })
  };
  var FULL = formatter({ weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  var decimal = new Intl.NumberFormat("fr-FR", { maximumFractionDigits: 1 });

  function when(seconds) { return FULL.format(new Date(seconds * 1000)); }

  // -- the figures drawn -------------------------------------------------------------------------

  function percent(values) {
    return values.map(function (v) { return v === null || v === undefined ? null : Math.round(v * 1000) / 10; });
  }

  // The share of locked operations protected throughout, per point (lib/ops/series' rule): held
  // until their holder finished, or a second attempt stopped; an expired lock counts against it.
  function protectedRate(locks) {
    return locks.acquired.map(function (acquired, i) {
      var blocked = locks.blocked[i], expired = locks.expired[i];
      var all = acquired + blocked;
      return all ? Math.round((Math.max(acquired - expired, 0) + blocked) / all * 1000) / 10 : null;
    });
  }

  function constant(length, value) {
    var out = [];
    for (var i = 0; i < length; i++) { out.push(value); }
    return out;
  }

  function counted(values) {
    return values.filter(function (v) { return v !== null && v !== undefined; }).length;
  }

  // -- uPlot options -----------------------------------------------------------------------------

  function axisX(step) {
    var ticks = TICKS[step] || TICKS[60];
    return {
      stroke: "#57606a",
      grid: { stroke: "#eaeef2" },
      values: function (u, splits) { return splits.map(function (t) { return ticks.format(new Date(t * 1000)); }); }
    };
  }

  // On a logarithmic scale uPlot puts a tick at 1..9 × each power of ten: only the powers are labelled.
  function axisY(unit, log) {
    return {
      stroke: "#57606a",
      grid: { stroke: "#eaeef2" },
      size: 60,
      values: function (u, splits) {
        return splits.map(function (v) {
          if (v === null) { return ""; }  // a tick uPlot left out for space
          if (log && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) > 1e-9) { return ""; }
          return (v >= 1000 && unit === " ms" ? decimal.format(v / 1000) + " s" : decimal.format(v) + unit);
        });
      }
    };
  }

  function line(label, color, unit, extra) {
    return Object.assign({
      label: label,
      stroke: color,
      width: 2,
      // Drawn as dots when few: a window with one busy minute still shows it (a line needs two).
      points: { size: 6, show: function (u, i) { return counted(u.data[i]) <= 12; } },
      value: function (u, v) { return v === null || v === undefined ? "—" : decimal.format(v) + unit; }
    }, extra || {});
  }

  function objective(label, value, unit) {
    return line(label + " : " + decimal.format(value) + unit, COLORS.objective, unit,
      { dash: [6, 4], width: 1.5, points: { show: false } });
  }

  function options(width, height, step, unit, series, scaleY) {
    return {
      width: width,
      height: height,
      padding: [12, 14, 0, 0],  // room for a dot on the last minute, at the right edge
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), TZ); },
      scales: { x: { time: true }, y: scaleY || {} },
      series: [{ label: "Heure (Dakar)", value: function (u, ts) { return ts === null ? "—" : when(ts); } }]
        .concat(series),
      axes: [axisX(step), axisY(unit, (scaleY || {}).distr === 3)],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } }
    };
  }

  function widthOf(node) {
    return Math.max(180, Math.floor(node.clientWidth || node.parentNode.clientWidth || 280));
  }

  function draw(node, opts, data, points) {
    node.setAttribute("data-points", String(points));
    node.textContent = "";
    if (!points) {
      node.appendChild(document.createTextNode(node.classList.contains("spark") ? "—" : "Aucune donnée sur la période."));
      node.setAttribute("data-empty", "true");
      return;
    }
    node.removeAttribute("data-empty");
    var entry = { plot: new uPlot(opts, data, node), node: node, sparkline: node.classList.contains("spark") };
    plots.push(entry);
    if (!entry.sparkline && window.ResizeObserver) {
      // The card's width decides the chart's: a phone turned, a window resized, a late layout.
      entry.observer = new ResizeObserver(function () {
        var width = widthOf(node);
        if (Math.abs(width - entry.plot.width) > 4) { entry.plot.setSize({ width: width, height: entry.plot.height }); }
      });
      entry.observer.observe(node);
    }
  }

  // A logarithmic range from the powers of ten around the data (uPlot's own may reach 0.001 ms).
  function decades(columns) {
    var values = [].concat.apply([], columns).filter(function (v) { return v !== null && v !== undefined && v > 0; });
    if (!values.length) { return [1, 100]; }
    var low = Math.pow(10, Math.floor(Math.log10(Math.max(0.1, Math.min.apply(null, values)))));
    var high = Math.pow(10, Math.ceil(Math.log10(Math.max.apply(null, values))));
    return [low, high > low ? high : low * 10];
  }

  // -- the charts of the page ----------------------------------------------------------------------

  var KPI = {
    hit_rate: function (m, s) {
      var goal = m.objectives.hit_rate * 100, values = percent(s.hit_rate);
      return { unit: " %", points: counted(values), range: { range: [0, 100] },
        series: [line("Taux de succès", COLORS.line, " %"), objective("Objectif", goal, " %")],
        data: [values, constant(values.length, goal)] };
    },
    latency: function (m, s) {
      var goal = m.objectives.latency_p50_ms;
      var range = decades([s.p50_ms, s.p95_ms, [goal]]);
      return { unit: " ms", points: counted(s.p50_ms), range: { distr: 3, log: 10, range: range },  // 1 ms and 1 s side by side
        series: [line("P50", COLORS.line, " ms"), line("P95", COLORS.second, " ms"), objective("Objectif P50", goal, " ms")],
        data: [s.p50_ms, s.p95_ms, constant(s.t.length, goal)] };
    },
    locks: function (m, s) {
      var values = protectedRate(s.locks);
      return { unit: " %", points: counted(values), range: { range: [0, 105] },
        series: [line("Opérations protégées", COLORS.line, " %"), objective("Objectif", 100, " %")],
        data: [values, constant(values.length, 100)] };
    },
    memory: function (m, s) {
      var goal = m.objectives.memory_alert_ratio * 100, values = percent(s.redis_memory_ratio);
      return { unit: " %", points: counted(values), range: { range: [0, 100] },
        series: [line("Mémoire utilisée", COLORS.line, " %"), objective("Alerte", goal, " %")],
        data: [values, constant(values.length, goal)] };
    },
    traffic: function (m, s) {
      return { unit: "", points: counted(s.requests.filter(function (n) { return n; })), range: {},
        series: [line("Requêtes", COLORS.line, ""), line("Requêtes servies par la base", COLORS.second, ""),
          line("Requêtes évitées (estimation)", COLORS.third, ""), line("Erreurs 5xx", COLORS.bad, "")],
        data: [s.requests, s.queries_served, s.queries_avoided, s.errors_5xx] };
    },
    incidents: function (m, s) {
      var points = counted(s.outbox_backlog) + counted(s.redis_keys) + counted(s.breaker_open.filter(function (n) { return n; }));
      return { unit: "", points: points, range: {},
        series: [line("Requêtes avec Redis contourné (disjoncteur ouvert)", COLORS.bad, ""),
          line("Invalidations en attente", COLORS.second, ""), line("Verrous sans Redis", COLORS.third, "")],
        data: [s.breaker_open, s.outbox_backlog, s.locks.unavailable] };
    }
  };

  function destroy() {
    plots.forEach(function (p) {
      if (p.observer) { p.observer.disconnect(); }
      p.plot.destroy();
    });
    plots = [];
  }

  function drawAll(m) {
    destroy();
    var s = m.series;
    if (!s || typeof uPlot === "undefined") { return; }
    Array.prototype.forEach.call(document.querySelectorAll("[data-chart]"), function (node) {
      var make = KPI[node.getAttribute("data-chart")];
      if (!make) { return; }
      var c = make(m, s);
      var height = window.matchMedia("(max-width: 40rem)").matches ? 150 : 180;
      draw(node, options(widthOf(node), height, s.step_seconds, c.unit, c.series, c.range), [s.t].concat(c.data), c.points);
    });
    var goal = m.objectives.hit_rate * 100;
    Array.prototype.forEach.call(document.querySelectorAll("[data-sparkline]"), function (node) {
      var values = percent(s.families[node.getAttribute("data-sparkline")] || []);
      var opts = {
        width: 120, height: 32, tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), TZ); },
        scales: { x: { time: true }, y: { range: [0, 100] } },
        series: [{}, { stroke: COLORS.line, width: 1.5,
          points: { size: 5, show: function (u, i) { return counted(u.data[i]) <= 12; } } },
          { stroke: COLORS.objective, width: 1, dash: [3, 3], points: { show: false } }],
        axes: [{ show: false }, { show: false }], legend: { show: false }, cursor: { show: false },
        padding: [4, 4, 4, 0]
      };
      draw(node, opts, [s.t, values, constant(values.length, goal)], counted(values));
    });
  }

  window.DousellCharts = { draw: drawAll, when: when };
})();
