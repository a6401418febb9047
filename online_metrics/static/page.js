// The online-metrics page: reads /v1/online-metrics every few seconds and draws, per
// (surface, model_version, arm), the rates of each time bucket as SVG lines. No library: the
// service runs without internet, and a few lines of SVG are all a plot needs.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Number(params.get("refresh_ms")) || 3000;
const LINES = [["ctr_at_k", "#1f6fd1"], ["add_to_cart_rate", "#e8800c"], ["purchase_rate", "#2c9c3c"]];
const SVG = "http://www.w3.org/2000/svg";
const W = 540, H = 190, M = { left: 52, right: 10, top: 10, bottom: 24 };

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(2)} %`);
const axisPct = (x) => `${(100 * x).toFixed(x && x < 0.1 ? 1 : 0)} %`;
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function rows(table, pairs) {
  const body = table.tBodies[0] || table.appendChild(el("tbody"));
  body.replaceChildren(...pairs.map(([k, v]) => {
    const tr = el("tr");
    tr.append(el("td", {}, k), el("td", { class: "n" }, String(v)));
    return tr;
  }));
}

// One plot: x = bucket start time, y = 0..the largest rate shown (at least 1 %).
function drawPlot(svg, series) {
  const xs = series.map((b) => b.start_ms);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const top = Math.max(0.01, ...series.flatMap((b) => LINES.map(([name]) => b[name] || 0)));
  const x = (t) => M.left + (x1 === x0 ? 0.5 : (t - x0) / (x1 - x0)) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - (v / top) * (H - M.top - M.bottom);
  const parts = [];
  for (const frac of [0, 0.5, 1]) {
    parts.push(el("svg:line", { class: frac ? "grid" : "axis", x1: M.left, x2: W - M.right, y1: y(top * frac), y2: y(top * frac) }));
    parts.push(el("svg:text", { x: M.left - 4, y: y(top * frac) + 4, "text-anchor": "end" }, axisPct(top * frac)));
  }
  parts.push(el("svg:text", { x: M.left, y: H - 6 }, clock(x0)));
  parts.push(el("svg:text", { x: W - M.right, y: H - 6, "text-anchor": "end" }, clock(x1)));
  // Rates often coincide (every cart bought): the later lines' dots are smaller, so that each stays visible.
  for (const [i, [name, color]] of LINES.entries()) {
    const points = series.filter((b) => b[name] !== null).map((b) => [x(b.start_ms), y(b[name])]);
    parts.push(el("svg:polyline", { class: `line ${name}`, stroke: color, "stroke-width": 3 - 0.8 * i, points: points.map((p) => p.join(",")).join(" ") }));
    for (const [px, py] of points) parts.push(el("svg:circle", { cx: px, cy: py, r: 4.5 - 1.2 * i, fill: color }));
  }
  svg.replaceChildren(...parts);
  svg.dataset.points = String(series.length);
}

function card(container, row) {
  const key = `${row.surface}/${row.model_version}/${row.arm}`;
  let node = container.querySelector(`.card[data-key="${CSS.escape(key)}"]`);
  if (!node) {
    node = el("article", { class: "card", "data-key": key });
    const legend = el("div", { class: "legend" });
    for (const [name, color] of LINES) {
      const span = el("span");
      span.append(el("i", { style: `background:${color}` }), document.createTextNode(name));
      legend.append(span);
    }
    node.append(el("h2"), el("svg:svg", { class: "plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-key": key }),
      legend, el("table", { class: "totals" }));
    container.append(node);
  }
  node.querySelector("h2").textContent = `${row.surface} · model ${row.model_version} · arm ${row.arm}`;
  drawPlot(node.querySelector("svg.plot"), row.series);
  const t = row.totals, r = row.rates;
  rows(node.querySelector("table.totals"), [
    ["lists served", t.impressions], ["items shown", t.items_shown],
    ["CTR@k", pct(r.ctr_at_k)], ["CTR (any position)", pct(r.ctr)],
    ["add-to-cart rate", pct(r.add_to_cart_rate)], ["purchase rate", pct(r.purchase_rate)],
    ["revenue", t.revenue], ["revenue per 1,000 lists", r.revenue_per_mille ?? "–"],
  ]);
}

function render(data) {
  const container = document.getElementById("keys");
  const keys = new Set(data.keys.map((row) => `${row.surface}/${row.model_version}/${row.arm}`));
  for (const old of container.querySelectorAll(".card")) if (!keys.has(old.dataset.key)) old.remove();
  container.querySelector(".empty")?.remove();
  if (!data.keys.length) container.append(el("p", { class: "empty" }, "No lists served yet."));
  for (const row of data.keys) card(container, row);
  rows(document.getElementById("unattributed"), Object.entries(data.unattributed));
  const bad = (data.bad_records || []).filter((b) => b.count).map((b) => [`bad ${b.topic}: ${b.reason}`, b.count]);
  rows(document.getElementById("records"), [...Object.entries(data.counters), ...bad,
    ["pending events", data.state.pending_events], ["lists kept", data.state.exposures_kept]]);
  const s = data.settings;
  document.getElementById("settings").textContent =
    `attribution window ${s.attribution_window_ms / 60000} min · k = ${s.ctr_k} · buckets of ${s.bucket_s} s`;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/v1/online-metrics", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    render(data);
    const caughtUp = !data.consumer || data.consumer.caught_up;
    status.dataset.state = "ok";
    status.textContent = `updated ${new Date().toLocaleTimeString()}${caughtUp ? "" : " · replaying the topics"}`;
  } catch (err) {
    status.dataset.state = "error";
    status.textContent = `could not load the metrics: ${err.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
