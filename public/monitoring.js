// The monitoring page: reads /api/metrics every few seconds and draws the seed's four KPIs, their
// trend (monitoring-charts.js, over uPlot) and the alerts firing. No build step. The token comes
// from the URL fragment (#token=...), or is asked for once, and stays in sessionStorage (this tab
// only). Every figure is written as text next to its bar, with its raw value in data-value (for
// tests and for anyone copying it).
"use strict";

(function () {
  var REFRESH_MS = 5000;
  // Redis unreadable this long (503s in a row) raises the page's own alert: the cron's alerts live
  // in Redis too, so the page says it itself, after the same 3 minutes as the cron's rule.
  var alertAfterMs = 3 * 60 * 1000;
  var unavailableSince = null;
  var STORE = "dousell.metricsToken";
  var FAMILIES = {
    properties_list: "Listes de biens",
    property_detail: "Détail d'un bien",
    search: "Recherches",
    visit_slots: "Créneaux de visite",
    dashboard: "Tableaux de bord",
    profile: "Profils",
    notifications: "Notifications",
    payments: "Historique des paiements",
    visits: "Visites réservées",
    lease_parties: "Parties d'un bail",
    other: "Autres"
  };

  var $ = function (id) { return document.getElementById(id); };
  var timer = null;
  var inflight = null;

  // -- formatting (French) ----------------------------------------------------------------------

  var integer = new Intl.NumberFormat("fr-FR", { maximumFractionDigits: 0 });
  var decimal = new Intl.NumberFormat("fr-FR", { minimumFractionDigits: 1, maximumFractionDigits: 1 });

  function pct(ratio) { return ratio === null || ratio === undefined ? "—" : decimal.format(ratio * 100) + "\u00a0%"; }
  function ms(value) {
    if (value === null || value === undefined) { return "—"; }
    return value >= 1000 ? decimal.format(value / 1000) + "\u00a0s" : decimal.format(value) + "\u00a0ms";
  }
  // A percentile beyond the histogram's last bound (the functions' 30 s limit) is only a floor.
  function latency(figures, name, limit) {
    return figures[name + "_above"] ? "> " + ms(limit) : ms(figures[name + "_ms"]);
  }
  var dakarTime = new Intl.DateTimeFormat("fr-FR", { timeZone: "Africa/Dakar", weekday: "short", day: "numeric",
    month: "short", hour: "2-digit", minute: "2-digit" });
  function dakar(date) { return dakarTime.format(date); }
  function count(value) { return value === null || value === undefined ? "—" : integer.format(value); }
  function bytes(value) {
    if (value === null || value === undefined) { return "—"; }
    return decimal.format(value / (1024 * 1024)) + "\u00a0Mo";
  }

  // -- DOM helpers: text only, never markup built from data -------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined) { return; }
      if (name === "text") { node.textContent = value; } else { node.setAttribute(name, String(value)); }
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function figure(name, value, text) {
    return el("strong", { "data-figure": name, "data-value": value === null ? "null" : value, text: text });
  }

  // A bar: `fraction` of the track filled (0..1), an optional objective marker; hidden from
  // screen readers, which read the figure written next to it.
  function bar(fraction, marker, state) {
    var fill = el("span", { "class": "fill" });
    fill.style.width = (fraction === null ? 0 : Math.max(0, Math.min(1, fraction)) * 100) + "%";
    var track = el("span", { "class": "bar", "aria-hidden": "true", "data-state": state }, [fill]);
    if (marker !== null && marker !== undefined) {
      var line = el("span", { "class": "target" });
      line.style.left = Math.max(0, Math.min(1, marker)) * 100 + "%";
      track.appendChild(line);
    }
    return track;
  }

  function verdict(state) {
    var words = { ok: "objectif atteint", bad: "objectif manqué", warn: "à surveiller", none: "pas encore de données" };
    return el("span", { "class": "verdict", "data-state": state, text: words[state] });
  }

  function chart(id, label) {
    return el("div", { "class": "chart", "data-chart": id, role: "img", "aria-label": label });
  }

  function kpi(id, title, objective, state, body) {
    return el("article", { "class": "kpi", "data-kpi": id, "data-state": state, "aria-labelledby": "kpi-" + id }, [
      el("h3", { id: "kpi-" + id, text: title }),
      el("p", { "class": "objective", text: objective })
    ].concat(body, [chart(id, title + " : évolution sur la période, objectif en pointillés")]));
  }

  // -- the four KPIs ----------------------------------------------------------------------------

  function hitRateCard(m) {
    var c = m.cache, goal = m.objectives.hit_rate;
    var state = c.hit_rate === null ? "none" : (c.hit_rate > goal ? "ok" : "bad");
    return kpi("hit_rate", "Taux de succès du cache", "Objectif : > " + pct(goal).replace(",0", ""), state, [
      bar(c.hit_rate, goal, state),
      el("p", { "class": "value" }, [figure("cache.hit_rate", c.hit_rate, pct(c.hit_rate)), " ", verdict(state)]),
      el("p", { "class": "detail" }, [
        figure("cache.hits", c.hits, count(c.hits)), " succès · ",
        figure("cache.stale", c.stale, count(c.stale)), " périmés servis · ",
        figure("cache.misses", c.misses, count(c.misses)), " échecs · ",
        figure("cache.bypasses", c.bypasses, count(c.bypasses)), " contournements (Redis indisponible)"
      ])
    ]);
  }

  function latencyCard(m) {
    var api = m.latency.api, up = m.latency.upstash, goal = m.objectives.latency_p50_ms, limit = m.latency.limit_ms;
    var state = api.p50_ms === null ? "none" : (api.p50_ms < goal ? "ok" : "bad");
    // The track spans twice the objective: the marker sits in its middle.
    return kpi("latency", "Latence P50 de l'API", "Objectif : < " + integer.format(goal) + "\u00a0ms", state, [
      bar(api.p50_ms === null ? null : api.p50_ms / (2 * goal), 0.5, state),
      el("p", { "class": "value" }, [figure("latency.api.p50_ms", api.p50_ms, latency(api, "p50", limit)), " ",
        verdict(state)]),
      el("p", { "class": "detail" }, [
        "P95 : ", figure("latency.api.p95_ms", api.p95_ms, latency(api, "p95", limit)), " sur ",
        figure("latency.api.count", api.count, count(api.count)), " requêtes · Upstash P50 ",
        figure("latency.upstash.p50_ms", up.p50_ms, ms(up.p50_ms)), ", P95 ",
        figure("latency.upstash.p95_ms", up.p95_ms, ms(up.p95_ms)), " sur ",
        figure("latency.upstash.count", up.count, count(up.count)), " appels"
      ])
    ]);
  }

  function locksCard(m) {
    var l = m.locks, goal = m.objectives.double_operations_prevented;
    var state = l.prevented_rate === null ? "none" : (l.prevented_rate >= goal ? "ok" : "bad");
    return kpi("locks", "Verrous : doubles opérations évitées", "Objectif : 100 %", state, [
      bar(l.prevented_rate, goal, state),
      el("p", { "class": "value" }, [figure("locks.prevented_rate", l.prevented_rate, pct(l.prevented_rate)), " ",
        verdict(state)]),
      el("p", { "class": "detail" }, [
        figure("locks.acquired", l.acquired, count(l.acquired)), " acquis · ",
        figure("locks.blocked", l.blocked, count(l.blocked)), " bloqués (doubles paiements ou réservations évités) · ",
        figure("locks.expired", l.expired, count(l.expired)), " expirés en cours de travail · ",
        figure("locks.unavailable", l.unavailable, count(l.unavailable)), " sans Redis"
      ])
    ]);
  }

  function memoryCard(m) {
    var r = m.redis, alert = m.objectives.memory_alert_ratio;
    var state = r.used_ratio === null ? "none" : (r.used_ratio < alert ? "ok" : "warn");
    var max = r.max_memory_bytes === null ? "pas de limite connue" : bytes(r.max_memory_bytes);
    return kpi("memory", "Mémoire Redis", "À surveiller : alerte au-delà de " + pct(alert).replace(",0", ""), state, [
      bar(r.used_ratio, alert, state),
      el("p", { "class": "value" }, [
        figure("redis.used_memory_bytes", r.used_memory_bytes, bytes(r.used_memory_bytes)), " / ",
        figure("redis.max_memory_bytes", r.max_memory_bytes, max), " (",
        figure("redis.used_ratio", r.used_ratio, pct(r.used_ratio)), ")"
      ]),
      el("p", { "class": "detail" }, [figure("redis.keys", r.keys, count(r.keys)), " clés"])
    ]);
  }

  // -- the tables -------------------------------------------------------------------------------

  function familyRows(m) {
    var goal = m.objectives.hit_rate;
    return Object.keys(m.cache.families).map(function (name) {
      var f = m.cache.families[name];
      var state = f.hit_rate === null ? "none" : (f.hit_rate > goal ? "ok" : "bad");
      var key = "families." + name + ".";
      return el("tr", { "data-family": name, "data-state": state }, [
        el("th", { scope: "row" }, [FAMILIES[name] || name, el("small", { text: name })]),
        el("td", { "class": "with-bar" }, [bar(f.hit_rate, goal, state), figure(key + "hit_rate", f.hit_rate, pct(f.hit_rate))]),
        el("td", { "class": "spark", "data-sparkline": name, role: "img",
          "aria-label": (FAMILIES[name] || name) + " : taux de succès sur la période" }),
        el("td", {}, [figure(key + "hits", f.hits, count(f.hits))]),
        el("td", {}, [figure(key + "stale", f.stale, count(f.stale))]),
        el("td", {}, [figure(key + "misses", f.misses, count(f.misses))]),
        el("td", {}, [figure(key + "bypasses", f.bypasses, count(f.bypasses))])
      ]);
    });
  }

  function endpointRows(m) {
    var names = Object.keys(m.latency.api.endpoints);
    if (!names.length) {
      return [el("tr", {}, [el("td", { colspan: 4, text: "Aucune requête sur la période." })])];
    }
    return names.map(function (name) {
      var e = m.latency.api.endpoints[name], key = "endpoints." + name + ".", limit = m.latency.limit_ms;
      return el("tr", { "data-endpoint": name }, [
        el("th", { scope: "row" }, [el("code", { text: name })]),
        el("td", {}, [figure(key + "count", e.count, count(e.count))]),
        el("td", {}, [figure(key + "p50_ms", e.p50_ms, latency(e, "p50", limit))]),
        el("td", {}, [figure(key + "p95_ms", e.p95_ms, latency(e, "p95", limit))])
      ]);
    });
  }

  function databaseFigures(m) {
    var d = m.database;
    var items = [
      ["Requêtes servies par la base", "database.queries_served", d.queries_served],
      ["Requêtes évitées grâce au cache (estimation)", "database.queries_avoided", d.queries_avoided],
      ["Requêtes en échec", "database.queries_failed", d.queries_failed],
      ["Écritures de métriques perdues", "metrics.lost_writes", m.metrics.lost_writes]
    ];
    var nodes = [];
    items.forEach(function (item) {
      nodes.push(el("dt", { text: item[0] }));
      nodes.push(el("dd", {}, [figure(item[1], item[2], count(item[2]))]));
    });
    return nodes;
  }

  function replace(node, children) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
    children.forEach(function (child) { node.appendChild(child); });
  }

  // The alerts firing, at the top: the server's (evaluated by the cron), and the page's own when
  // Redis has been unreadable for alertAfterMs.
  function showAlerts(list) {
    var items = list.map(function (a) {
      return el("li", { "data-alert": a.name }, [
        el("strong", { text: a.message }), " ",
        el("span", { "class": "since", text: "depuis " + dakar(new Date(a.since)) + " (heure de Dakar)" })
      ]);
    });
    replace($("alerts-list"), items);
    $("alerts").hidden = !items.length;
  }

  function render(m) {
    unavailableSince = null;
    showAlerts(m.alerts || []);
    replace($("kpis"), [hitRateCard(m), latencyCard(m), locksCard(m), memoryCard(m)]);
    replace($("families").tBodies[0], familyRows(m));
    replace($("endpoints").tBodies[0], endpointRows(m));
    replace($("database"), databaseFigures(m));
    $("dashboard").hidden = false;
    $("dashboard").removeAttribute("data-stale");
    if (window.DousellCharts) { window.DousellCharts.draw(m); }
    var now = new Date();
    $("updated").textContent = "mis à jour le " + dakar(now) + " (heure de Dakar)";
    $("updated").setAttribute("data-window", m.window);
  }

  // -- state: token, polling, errors ------------------------------------------------------------

  function setState(state, message) {
    document.body.setAttribute("data-state", state);
    $("status").textContent = message;
  }

  function token() {
    try { return sessionStorage.getItem(STORE); } catch (e) { return window.__metricsToken || null; }
  }

  function keepToken(value) {
    try { sessionStorage.setItem(STORE, value); } catch (e) { window.__metricsToken = value; }
  }

  function forgetToken() {
    try { sessionStorage.removeItem(STORE); } catch (e) { window.__metricsToken = null; }
  }

  function askForToken(message) {
    clearTimeout(timer);
    forgetToken();
    $("login-message").textContent = message;
    $("login").hidden = false;
    $("dashboard").hidden = true;
    setState("login", message);
    $("token").focus();
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function refresh() {
    var current = token();
    if (!current) { askForToken("Saisissez le jeton METRICS_TOKEN pour afficher les métriques."); return; }
    if (inflight) { inflight.abort(); }
    inflight = new AbortController();
    var windowName = $("window").value;
    fetch("/api/metrics?window=" + encodeURIComponent(windowName), {
      headers: { "Authorization": "Bearer " + current, "Accept": "application/json" },
      cache: "no-store",
      signal: inflight.signal
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        return { status: response.status, body: body };
      });
    }).then(function (answer) {
      if (answer.status === 200 && answer.body) {
        render(answer.body);
        setState("ready", "Métriques à jour (" + $("window").selectedOptions[0].textContent.toLowerCase() + ").");
        schedule();
      } else if (answer.status === 401) {
        askForToken("Jeton refusé : saisissez-le à nouveau.");
      } else if (answer.status === 503) {
        $("dashboard").setAttribute("data-stale", "true");
        unavailableSince = unavailableSince || new Date();
        var quota = answer.body && answer.body.error && answer.body.error.details &&
          answer.body.error.details.redis_quota;
        if (quota) {  // a used-up Upstash quota is known at once: no need to wait for it to last
          var kind = quota.quota === "monthly" ? "mensuel" : "quotidien";
          var until = dakar(new Date(quota.until)) + " (heure de Dakar)";
          showAlerts([{ name: "upstash_quota", since: unavailableSince.toISOString(),
            message: "Quota " + kind + " de commandes Upstash atteint : le cache est contourné jusqu'au " + until +
              " ; le site répond depuis la base de données." }]);
          setState("unavailable", "Quota " + kind + " de commandes Upstash atteint : les métriques ne peuvent pas " +
            "être lues avant le " + until + ". Le site répond toujours depuis la base de données.");
        } else {
          if (new Date() - unavailableSince >= alertAfterMs) {
            showAlerts([{ name: "redis", since: unavailableSince.toISOString(),
              message: "Redis injoignable : les métriques ne peuvent pas être lues ; le site répond depuis la base de données." }]);
          }
          setState("unavailable", "Redis est indisponible : les métriques ne peuvent pas être lues. " +
            "Le site répond toujours depuis la base de données. Nouvel essai dans 5 secondes.");
        }
        schedule();
      } else {
        var error = answer.body && answer.body.error;
        setState("error", "Erreur " + answer.status + (error ? " (" + error.code + ") : " + error.message : "."));
        schedule();
      }
    }).catch(function (err) {
      if (err && err.name === "AbortError") { return; }
      setState("error", "L'API ne répond pas. Nouvel essai dans 5 secondes.");
      schedule();
    });
  }

  function start() {
    // #token=...&window=... : opened from a link or a test; the token leaves the address bar at once.
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.get("token")) { keepToken(params.get("token")); }
    // Compared with each option's value, never spliced into a selector: `#window='` is not CSS.
    var wanted = params.get("window");
    wanted = { last_hour: "1h", last_24h: "24h" }[wanted] || wanted;  // the first page's names, in old links
    // `alert_after=<seconds>`: how long Redis must stay unreadable before the page's own alert (tests shorten it).
    var after = Number(params.get("alert_after"));
    if (after > 0) { alertAfterMs = after * 1000; }
    if (Array.prototype.some.call($("window").options, function (option) { return option.value === wanted; })) {
      $("window").value = wanted;
    }
    if (location.hash) { history.replaceState(null, "", location.pathname + location.search); }

    $("login").addEventListener("submit", function (event) {
      event.preventDefault();
      var value = $("token").value.trim();
      if (!value) { return; }
      keepToken(value);
      $("token").value = "";
      $("login").hidden = true;
      setState("loading", "Chargement…");
      refresh();
    });
    $("forget").addEventListener("click", function () {
      askForToken("Saisissez le jeton METRICS_TOKEN pour afficher les métriques.");
    });
    $("window").addEventListener("change", function () {
      setState("loading", "Chargement…");
      refresh();
    });
    refresh();
  }

  start();
})();
