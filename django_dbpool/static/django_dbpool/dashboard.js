/* django_dbpool's admin dashboard: polls the JSON endpoint every few seconds, updates the
   values the server rendered, and draws "in use" and "waiting" over the last minutes.
   No dependencies. Text from the server (process names, connection tags from any client of
   the database) only ever goes into textContent, never into HTML. */
"use strict";
(function () {
  const root = document.querySelector(".dbpool-root[data-url]");
  if (!root) {
    return;
  }
  const url = root.dataset.url;
  const refreshMs = Math.max(1, Number(root.dataset.refreshSeconds) || 2) * 1000;
  // The servers' view borrows a connection from the pools being watched: ask less often.
  const serverEvery = Math.max(1, Number(root.dataset.serverEvery) || 5);
  const windowSeconds = 300;
  // Enough samples for the window even if refreshes come faster than configured.
  const maxSamples = Math.ceil(windowSeconds / (refreshMs / 1000)) + 10;
  const history = new Map(); // alias -> [{t, inUse, waiting, max}]
  const status = root.querySelector("[data-dbpool-status]");
  let timer = null;
  let busy = false;
  let refreshes = 0;

  function lookup(object, path) {
    return path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), object);
  }

  // The same formats as django_dbpool.dashboard.display().
  function display(value, kind) {
    if (value === null || value === undefined) {
      return "-";
    }
    if (kind === "text") {
      return String(value);
    }
    if (kind === "rate") {
      return Number(value).toFixed(1);
    }
    if (kind === "seconds") {
      const seconds = Number(value);
      return seconds < 1 ? (seconds * 1000).toFixed(1) + " ms" : seconds.toFixed(2) + " s";
    }
    return String(Math.trunc(Number(value)));
  }

  // The same thresholds as django_dbpool.dashboard.gauge_level().
  function gaugeLevel(key, value, max) {
    if (key === "waiting") {
      return value > 0 ? "bad" : "";
    }
    if (key !== "in_use" || max <= 0) {
      return "";
    }
    return value >= max ? "bad" : value >= 0.75 * max ? "warn" : "";
  }

  function cell(text, numeric, code) {
    const td = document.createElement("td");
    if (numeric) {
      td.className = "dbpool-num";
    }
    if (code) {
      const inner = document.createElement("code");
      inner.textContent = text;
      td.appendChild(inner);
    } else {
      td.textContent = text;
    }
    return td;
  }

  function fillRows(tbody, rows, columns, emptyText) {
    const fresh = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const [value, numeric, code] of columns(row)) {
        tr.appendChild(cell(value, numeric, code));
      }
      fresh.appendChild(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(emptyText, false, false);
      td.colSpan = 13;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    tbody.replaceChildren(fresh);
  }

  function processColumns(row) {
    const g = row.gauges;
    return [
      [String(row.pid), true],
      [row.process, false, true],
      [row.lease, false],
      [display(g.size, "count"), true],
      [display(g.in_use, "count"), true],
      [display(g.idle, "count"), true],
      [display(g.waiting, "count"), true],
      [display(g.max_size, "count"), true],
      [display(row.counters.acquired, "count"), true],
      [display(row.checkouts_per_second, "rate"), true],
      [display(row.counters.timeouts, "count"), true],
      [display(row.wait_p99_seconds, "seconds"), true],
      [Number(row.age_seconds).toFixed(1) + " s ago", true],
    ];
  }

  function groupColumns(group) {
    const age = group.oldest_transaction_seconds;
    return [
      [group.tag, false, true],
      [group.state, false],
      [String(group.connections), true],
      [age === null || age === undefined ? "-" : Math.round(age) + " s", true],
    ];
  }

  function updateAlias(section, pool, generatedAt) {
    for (const element of section.querySelectorAll("[data-dbpool-value]")) {
      element.textContent = display(lookup(pool, element.dataset.dbpoolValue), element.dataset.dbpoolFormat);
    }
    const max = Number(pool.gauges.max_size) || 0;
    for (const gauge of section.querySelectorAll("[data-dbpool-gauge]")) {
      const key = gauge.dataset.dbpoolGauge;
      const value = Number(pool.gauges[key]) || 0;
      const bar = gauge.firstElementChild;
      bar.style.width = (max > 0 ? Math.min(100, Math.round((100 * value) / max)) : 0) + "%";
      gauge.classList.remove("dbpool-warn", "dbpool-bad");
      const level = gaugeLevel(key, value, max);
      if (level) {
        gauge.classList.add("dbpool-" + level);
      }
    }
    const tbody = section.querySelector("[data-dbpool-processes]");
    if (tbody) {
      fillRows(
        tbody,
        pool.per_process,
        processColumns,
        "No process on this host has opened this pool yet (pools open at the first query).",
      );
    }
    const samples = history.get(pool.alias) || [];
    samples.push({
      t: generatedAt,
      inUse: Number(pool.gauges.in_use) || 0,
      waiting: Number(pool.gauges.waiting) || 0,
      max: max,
    });
    while (samples.length > maxSamples || (samples.length && samples[0].t < generatedAt - windowSeconds)) {
      samples.shift();
    }
    history.set(pool.alias, samples);
    const canvas = section.querySelector("canvas[data-dbpool-chart]");
    if (canvas) {
      canvas.dataset.samples = String(samples.length);
      draw(canvas, samples, generatedAt);
    }
  }

  function updateServers(servers) {
    for (const block of root.querySelectorAll("[data-dbpool-server]")) {
      const server = servers[Number(block.dataset.dbpoolServer)];
      if (!server) {
        continue;
      }
      const summary = block.querySelector("[data-dbpool-server-summary]");
      summary.replaceChildren();
      if (server.error) {
        const span = document.createElement("span");
        span.className = "dbpool-error";
        span.textContent = "Unavailable: " + server.error;
        summary.appendChild(span);
      } else {
        summary.textContent =
          server.vendor + ": " + server.in_use + " of max_connections " + server.max_connections +
          " in use, " + server.reserved + " reserved, headroom " + server.headroom;
      }
      fillRows(block.querySelector("[data-dbpool-server-groups]"), server.groups || [], groupColumns, "");
    }
  }

  function cssColor(element, name, fallback) {
    return getComputedStyle(element).getPropertyValue(name).trim() || fallback;
  }

  function draw(canvas, samples, now) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) {
      return;
    }
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    // The admin's own variables, read at every draw, so that the light and dark themes
    // (and switching between them) both apply.
    const colors = {
      text: cssColor(canvas, "--body-quiet-color", "#666"),
      grid: cssColor(canvas, "--hairline-color", "#e8e8e8"),
      inUse: cssColor(canvas, "--link-fg", "#417893"),
      waiting: cssColor(canvas, "--error-fg", "#ba2121"),
    };
    const left = 32;
    const bottom = height - 18;
    const top = 8;
    const right = width - 8;
    let topValue = 1;
    for (const s of samples) {
      topValue = Math.max(topValue, s.max, s.inUse, s.waiting);
    }
    // The span grows with the history kept, from one minute up to the whole window.
    const span = samples.length ? Math.min(windowSeconds, Math.max(60, now - samples[0].t)) : 60;
    const x = (t) => right - ((now - t) / span) * (right - left);
    const y = (v) => bottom - (v / topValue) * (bottom - top);

    ctx.font = "11px " + cssColor(canvas, "--font-family-primary", "sans-serif");
    ctx.fillStyle = colors.text;
    ctx.strokeStyle = colors.grid;
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (const value of [0, Math.round(topValue / 2), topValue]) {
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y(value)) + 0.5);
      ctx.lineTo(right, Math.round(y(value)) + 0.5);
      ctx.stroke();
      ctx.fillText(String(value), left - 6, y(value));
    }
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    ctx.fillText(Math.round(span / 60) + " min ago", left, height - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", right, height - 4);

    function line(key, color, dashed) {
      if (!samples.length) {
        return;
      }
      ctx.beginPath();
      ctx.setLineDash(dashed ? [4, 4] : []);
      ctx.strokeStyle = color;
      ctx.lineWidth = dashed ? 1 : 2;
      samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s[key])) : ctx.moveTo(x(s.t), y(s[key]))));
      if (samples.length === 1) {
        ctx.lineTo(right, y(samples[0][key])); // one sample: a short level mark, not nothing
      }
      ctx.stroke();
      ctx.setLineDash([]);
    }
    line("max", colors.text, true);
    line("waiting", colors.waiting, false);
    line("inUse", colors.inUse, false);
  }

  function redrawAll() {
    const now = Date.now() / 1000;
    for (const section of root.querySelectorAll("[data-dbpool-alias]")) {
      const canvas = section.querySelector("canvas[data-dbpool-chart]");
      const samples = history.get(section.dataset.dbpoolAlias) || [];
      if (canvas && samples.length) {
        draw(canvas, samples, samples[samples.length - 1].t || now);
      }
    }
  }

  async function refresh() {
    timer = null;
    if (busy) {
      return;
    }
    busy = true;
    try {
      const withServer = refreshes % serverEvery === serverEvery - 1;
      const response = await fetch(url + (withServer ? "" : "?server=0"), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.includes("json")) {
        // A login page (session expired) or a refusal: say so, keep trying.
        throw new Error(response.ok ? "not signed in any more? Reload the page." : "HTTP " + response.status);
      }
      const data = await response.json();
      const byAlias = new Map(data.aliases.map((pool) => [pool.alias, pool]));
      for (const section of root.querySelectorAll("[data-dbpool-alias]")) {
        const pool = byAlias.get(section.dataset.dbpoolAlias);
        if (pool) {
          updateAlias(section, pool, data.generated_at);
        }
      }
      if (withServer) {
        updateServers(data.servers || []);
      }
      refreshes += 1;
      root.dataset.refreshes = String(refreshes);
      status.textContent =
        "Updated " + new Date(data.generated_at * 1000).toLocaleTimeString() +
        "; refreshing every " + refreshMs / 1000 + " s.";
      status.classList.remove("dbpool-error");
    } catch (error) {
      status.textContent = "Refresh failed (" + error.message + "); retrying.";
      status.classList.add("dbpool-error");
    } finally {
      busy = false;
    }
    schedule();
  }

  function schedule() {
    // A hidden tab asks for nothing; it refreshes at once when shown again.
    if (timer === null && !document.hidden) {
      timer = window.setTimeout(refresh, refreshMs);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !busy) {
      refresh();
    }
  });
  // Follow the admin's theme toggle and the system's light/dark preference, and resizes.
  new MutationObserver(redrawAll).observe(document.documentElement, {
    attributes: true,
    attributeFilter: ["data-theme"],
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redrawAll);
  window.addEventListener("resize", redrawAll);
  refresh();
})();
