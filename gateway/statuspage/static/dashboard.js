// bedrock-gateway status page: polls <base>/data and draws it as SVG. No library, no build.
"use strict";

(function () {
  const POLL_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  const base = document.body.dataset.base;
  const KINDS = [
    ["admitted", "admitted"],
    ["queued", "queued"],
    ["refused", "refused (local 429)"],
    ["upstream_throttled", "throttled by Bedrock"],
  ];
  const COLORS = {
    admitted: "#2e7d32", queued: "#1565c0", refused: "#ef6c00",
    upstream_throttled: "#c62828", utilization: "#6a1b9a", limit: "#9aa0a6",
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function num(n) {
    if (n === null || n === undefined) return "–";
    return Math.round(n).toLocaleString("en-US");
  }

  function pct(ratio) {
    return ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(1) + " %";
  }

  function when(unix) {
    return unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
  }

  function niceMax(value) {
    if (value <= 1) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  // A line chart: times (unix s) along x, each series' values along y, from 0 to yMax.
  function lineChart(node, times, series, opts) {
    const W = 560, H = 170, L = 44, R = 10, T = 8, B = 22;
    node.replaceChildren();
    node.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const values = series.flatMap((s) => s.values.filter((v) => v !== null));
    const limits = (opts.lines || []).map((line) => line.value);
    const yMax = opts.yMax || niceMax(Math.max(1, ...values, ...limits));
    const t1 = times.length ? times[times.length - 1] : 0;
    const t0 = Math.min(times.length ? times[0] : 0, t1 - 60);
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / yMax) * (H - T - B);
    for (const frac of [0, 0.5, 1]) {
      const v = yMax * frac;
      node.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = svg("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = opts.percent ? Math.round(v * 100) + "%"
        : v.toLocaleString("en-US", { maximumFractionDigits: 1 });
      node.append(label);
    }
    for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
      const label = svg("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": anchor });
      label.textContent = t === t1 ? "now" : "-" + Math.round((t1 - t0) / 60) + " min";
      node.append(label);
    }
    for (const line of opts.lines || []) {
      node.append(svg("line", {
        class: "limit", x1: L, x2: W - R, y1: y(line.value), y2: y(line.value),
        stroke: line.color || COLORS.limit, "data-line": line.name,
      }));
    }
    for (const s of series) {
      const points = [];
      s.values.forEach((v, i) => { if (v !== null) points.push(`${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`); });
      const last = s.values.length ? s.values[s.values.length - 1] : null;
      const poly = svg("polyline", {
        points: points.join(" "), stroke: s.color, "data-series": s.name,
        "data-points": points.length, "data-last": last === null ? "" : last,
      });
      const title = svg("title");
      title.textContent = `${s.label}: ${opts.percent ? pct(last) : num(last)} now`;
      poly.append(title);
      node.append(poly);
      if (points.length) {
        const [cx, cy] = points[points.length - 1].split(",");
        node.append(svg("circle", { cx, cy, r: 3, fill: s.color }));
      }
    }
  }

  function legend(entries) {
    return el("div", { class: "legend" }, ...entries.map(([name, label]) => {
      const swatch = el("i");
      swatch.style.background = COLORS[name];
      return el("span", {}, swatch, label);
    }));
  }

  function tile(kind, label) {
    const value = el("div", { class: "value", "data-stat": kind + "-minute" }, "–");
    const total = el("span", { "data-stat": kind + "-total" }, "–");
    return el("div", { class: "tile " + kind }, value,
      el("div", { class: "label" }, label + " / min · ", total, " since start"));
  }

  function poolCard(pool) {
    const util = el("div", { class: "tile utilization" },
      el("div", { class: "value", "data-stat": "utilization" }, "–"),
      el("div", { class: "label" }, "of learned quota · ",
        el("span", { "data-stat": "used" }, "–"), " tokens"));
    const card = el("div", { class: "card pool", "data-pool": pool.pool },
      el("h3", {}, pool.pool),
      el("p", { class: "sub" }, "models: " + pool.models.join(", ") + " · routes: " + pool.routes.join(", ")),
      el("div", { class: "tiles" }, ...KINDS.map(([kind, label]) => tile(kind, label)), util),
      legend(KINDS),
      svg("svg", { class: "chart", "data-chart": "counts", role: "img" }),
      legend([["utilization", "tokens used in the rolling minute / learned quota (dashed: 100 %)"],
        ["limit", "configured quota"]]),
      svg("svg", { class: "chart", "data-chart": "utilization", role: "img" }),
      el("p", { class: "sub", "data-stat": "quota" }));
    return card;
  }

  function renderPools(data) {
    const holder = document.getElementById("pools");
    const times = data.history.t;
    for (const pool of data.pools) {
      let card = holder.querySelector(`[data-pool="${CSS.escape(pool.pool)}"]`);
      if (!card) holder.append(card = poolCard(pool));
      const stat = (name) => card.querySelector(`[data-stat="${name}"]`);
      for (const [kind] of KINDS) {
        stat(kind + "-minute").textContent = pool.last_minute ? num(pool.last_minute[kind]) : "–";
        stat(kind + "-total").textContent = num(pool.totals[kind]);
      }
      stat("utilization").textContent = pct(pool.utilization);
      stat("used").textContent = num(pool.used_tokens);
      stat("quota").textContent = pool.tpm === null
        ? "no tokens-per-minute quota configured"
        : `configured ${num(pool.tpm)} TPM · learned ${num(pool.learned_tpm)} TPM ` +
          `(factor ${pool.quota_factor}) · waiting now: ${pool.queue_depth}`;
      const history = data.history.pools[pool.pool];
      lineChart(card.querySelector('[data-chart="counts"]'), times,
        KINDS.map(([kind, label]) => ({ name: kind, label, color: COLORS[kind], values: history[kind] })), {});
      const configured = pool.tpm && pool.learned_tpm ? pool.tpm / pool.learned_tpm : null;
      lineChart(card.querySelector('[data-chart="utilization"]'), times,
        [{ name: "utilization", label: "utilization", color: COLORS.utilization, values: history.utilization }],
        { percent: true, lines: configured ? [{ name: "configured", value: configured }, { name: "learned", value: 1, color: COLORS.utilization }] : [] });
    }
  }

  function renderStore(store) {
    const badge = document.getElementById("store-state");
    badge.textContent = store.state;
    badge.className = "badge " + (store.state.startsWith("ok") ? "ok" : store.state.startsWith("degraded") ? "warn" : "bad");
    const facts = document.getElementById("store-facts");
    const failures = Object.entries(store.failures).map(([op, n]) => `${op} ${n}`).join(", ") || "none";
    const latency = Object.entries(store.mean_latency_ms).map(([op, ms]) => `${op} ${ms} ms`).join(", ") || "–";
    facts.replaceChildren();
    for (const [term, value] of [["backend", store.backend], ["on failure", store.on_failure],
      ["failed calls", failures], ["mean latency", latency]]) {
      facts.append(el("dt", {}, term), el("dd", { "data-fact": term }, value));
    }
  }

  function renderRequests(data) {
    const chips = document.getElementById("outcomes");
    chips.replaceChildren();
    const outcomes = Object.entries(data.requests).sort((a, b) => b[1] - a[1]);
    if (!outcomes.length) chips.append(el("span", { class: "muted" }, "none yet"));
    for (const [outcome, n] of outcomes) {
      chips.append(el("span", { class: "chip", "data-outcome": outcome }, el("b", {}, num(n)), " " + outcome));
    }
    const outside = Object.entries(data.refused_outside_pools).map(([reason, n]) => `${reason} ${n}`);
    document.getElementById("outside").textContent = outside.length
      ? "Refused by no pool (a tenant's budget, a full queue, draining): " + outside.join(", ") : "";
  }

  function amount(row, value) {  // tokens, or dollars for monthly_spend_usd
    return row.unit === "usd"
      ? "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })
      : num(value);
  }

  function renderTenants(rows) {
    const body = document.querySelector("#tenants tbody");
    body.replaceChildren();
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "no tenant in the config has a budget")));
    for (const row of rows) {
      const fill = el("span");
      fill.style.width = Math.min(100, row.ratio * 100).toFixed(1) + "%";
      const bar = el("div", { class: "bar" + (row.ratio >= 0.9 ? " bad" : row.ratio >= 0.8 ? " warn" : "") }, fill);
      body.append(el("tr", { "data-tenant": row.tenant, "data-budget": row.budget },
        el("td", {}, row.tenant), el("td", {}, row.budget), el("td", { "data-stat": "used" }, amount(row, row.used)),
        el("td", {}, amount(row, row.limit)), el("td", {}, amount(row, row.remaining)), el("td", { class: "barcol" }, bar)));
    }
  }

  function renderLearned(pools) {
    const body = document.querySelector("#learned tbody");
    body.replaceChildren();
    for (const pool of pools) {
      body.append(el("tr", { "data-pool": pool.pool },
        el("td", {}, pool.pool), el("td", {}, num(pool.tpm)), el("td", {}, num(pool.learned_tpm)),
        el("td", { "data-stat": "factor" }, String(pool.quota_factor)),
        el("td", {}, when(pool.throttled_at)), el("td", {}, when(pool.holds_until))));
    }
  }

  function render(data) {
    const up = Math.max(0, data.generated_at - data.started_at);
    document.getElementById("replica").textContent =
      `replica ${data.replica.host} (pid ${data.replica.pid}), up ${Math.floor(up / 60)} min ${Math.floor(up % 60)} s`;
    renderStore(data.store);
    renderRequests(data);
    renderPools(data);
    renderTenants(data.tenants);
    renderLearned(data.pools);
    const updated = document.getElementById("updated");
    updated.textContent = "updated " + when(data.generated_at);
    updated.dataset.generatedAt = String(data.generated_at);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }

  async function poll() {
    try {
      const reply = await fetch(base + "/data", { credentials: "same-origin", cache: "no-store" });
      if (reply.status === 401 || reply.status === 403) { window.location.assign(base); return; }
      if (reply.ok) render(await reply.json());
      else document.getElementById("updated").textContent = `the gateway answered ${reply.status}; retrying`;
    } catch (err) {
      document.getElementById("updated").textContent = "the gateway did not answer; retrying";
    }
    window.setTimeout(poll, POLL_MS);
  }

  poll();
})();
