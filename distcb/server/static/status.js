// The distcb status page: renders GET /status as it arrives on /events (server-sent events).
// No library, no build step. The DOM is built with textContent only: metric names, hosts and
// callback names come from the job, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PLOT_W = 240;
const PLOT_H = 70;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v);
}

function fmt(v) {
  if (isNumber(v)) {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4);
  }
  return v === null || v === undefined ? "–" : String(v);
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node.textContent !== text) node.textContent = text;
}

// ---------------------------------------------------------------- summary

// Epochs as Keras counts them (1-based): "3/400" while the third runs; once the job is
// done, how many finished ("finished 400/400", or "stopped early at 608/4000").
function epochText(s) {
  const of = s.epochs ? `/${s.epochs}` : "";
  const done = s.epochs_done || 0;
  if (s.phase === "done") {
    if (s.failure) return `failed after ${done}${of}`;
    if (s.epochs && done < s.epochs) return `stopped early at ${done}${of}`;
    return `finished ${done}${of}`;
  }
  if (s.phase === "joining") return `0${of}`;
  return `${s.epoch + 1}${of}`;
}

// Without a batch hook on the coordinator, workers stream no batch logs: steps stay at their
// start values, so say that instead of showing 0 and -1 forever.
const NOT_STREAMED = "not streamed";
const NOT_STREAMED_WHY =
  "no coordinator callback has a batch hook, so workers send epoch logs only";

function renderSummary(s) {
  setText("phase", s.phase);
  setText("epoch", epochText(s));
  const step = document.getElementById("global-step");
  setText("global-step", s.batches_streamed === false ? NOT_STREAMED : String(s.global_step));
  step.title = s.batches_streamed === false ? NOT_STREAMED_WHY : "";
  setText("world-size", `${(s.live || []).length}/${s.world_size} live`);
  const failure = document.getElementById("failure");
  failure.hidden = !s.failure;
  failure.textContent = s.failure ? `The job failed: ${s.failure}` : "";
}

// ---------------------------------------------------------------- workers

function lagText(w, streamed) {
  if (w.lag_epochs) return `${w.lag_epochs} epoch${w.lag_epochs > 1 ? "s" : ""}`;
  if (!streamed) return "0 epochs";
  return w.lag_steps === null || w.lag_steps === undefined ? "–" : `${w.lag_steps} steps`;
}

function renderWorkers(workers, streamed) {
  const table = document.getElementById("workers");
  table.classList.toggle("no-steps", !streamed);
  const body = document.querySelector("#workers tbody");
  body.replaceChildren(
    ...workers.map((w) => {
      const row = el("tr", { "data-rank": String(w.rank), class: w.state === "lost" ? "lost" : "" });
      const cells = [
        ["rank", String(w.rank), w.rank],
        ["host", w.host || "?", w.host],
        ["state", w.lost_reason ? `lost: ${w.lost_reason}` : w.state, w.state],
        ["epoch", String(w.epoch), w.epoch],
        ["step", streamed ? (w.step >= 0 ? String(w.step) : "–") : NOT_STREAMED, w.step],
        ["lag", lagText(w, streamed), w.lag_steps],
        ["heartbeat", `${Number(w.heartbeat_age_s).toFixed(1)} s ago`, w.heartbeat_age_s],
      ];
      for (const [name, text, value] of cells) {
        row.append(el("td", { class: name, "data-value": String(value) }, text));
      }
      return row;
    })
  );
}

// ---------------------------------------------------------------- plots

function scale(values) {
  const finite = values.filter(isNumber);
  if (!finite.length) return null;
  let low = Math.min(...finite);
  let high = Math.max(...finite);
  if (low === high) {
    low -= 0.5;
    high += 0.5;
  }
  return (v) => PLOT_H - 4 - ((v - low) / (high - low)) * (PLOT_H - 8);
}

function xAt(i, n) {
  return n <= 1 ? PLOT_W / 2 : 4 + (i * (PLOT_W - 8)) / (n - 1);
}

// A learning rate spans decades (a schedule, ReduceLROnPlateau's factors): plot its log.
function isLearningRate(name) {
  return /(^|_)(learning_rate|lr)$/.test(name);
}

function linePlot(values) {
  const svg = svgEl("svg", { viewBox: `0 0 ${PLOT_W} ${PLOT_H}`, role: "img" });
  const y = scale(values);
  if (!y) return svg;
  const points = [];
  values.forEach((v, i) => {
    if (isNumber(v)) points.push(`${xAt(i, values.length).toFixed(1)},${y(v).toFixed(1)}`);
  });
  svg.append(svgEl("polyline", { points: points.join(" ") }));
  return svg;
}

function plotBox(name) {
  const box = el("div", { class: "plot", "data-metric": name });
  box.append(el("span", { class: "name" }, name));
  return box;
}

function axis(epochs) {
  const row = el("div", { class: "axis" });
  row.append(el("span", {}, epochs.length ? `epoch ${epochs[0]}` : ""));
  row.append(el("span", {}, epochs.length ? `epoch ${epochs[epochs.length - 1]}` : ""));
  return row;
}

function renderMetrics(history, epochs) {
  const root = document.getElementById("metrics");
  const names = Object.keys(history).sort();
  if (!names.length) return;
  root.replaceChildren(
    ...names.map((name) => {
      const values = history[name];
      const box = plotBox(name);
      box.setAttribute("data-points", String(values.length));
      const last = values[values.length - 1];
      box.append(el("span", { class: "last", "data-value": String(last) }, fmt(last)));
      const logScale = isLearningRate(name) && values.every((v) => !isNumber(v) || v > 0);
      box.setAttribute("data-scale", logScale ? "log" : "linear");
      if (logScale) box.append(el("span", { class: "scale" }, "log scale"));
      box.append(linePlot(logScale ? values.map((v) => (isNumber(v) ? Math.log10(v) : v)) : values));
      box.append(axis(epochs));
      return box;
    })
  );
}

function renderSpread(s) {
  const root = document.getElementById("spread");
  const current = s.epoch_spread || {};
  const monitored = (s.monitored || []).filter((m) => m in current);
  const names = monitored.length ? monitored : Object.keys(current).sort().slice(0, 1);
  if (!names.length) return;
  root.replaceChildren(
    ...names.map((name) => {
      const spread = current[name];
      const past = (s.epoch_spread_history || {})[name] || [];
      const box = plotBox(name);
      box.setAttribute("data-points", String(past.length));
      const values = el("div", { class: "spread-values" });
      values.append("min ", el("b", { class: "min", "data-value": String(spread.min) }, fmt(spread.min)));
      values.append(" (rank ", el("span", { class: "min-rank" }, String(spread.min_rank)), ")  max ");
      values.append(el("b", { class: "max", "data-value": String(spread.max) }, fmt(spread.max)));
      values.append(" (rank ", el("span", { class: "max-rank" }, String(spread.max_rank)), ")");
      box.append(values);
      // The band between the workers' min and max, with the aggregated value as a line.
      const mins = past.map((p) => p.min);
      const maxs = past.map((p) => p.max);
      const svg = svgEl("svg", { viewBox: `0 0 ${PLOT_W} ${PLOT_H}`, role: "img" });
      const y = scale(mins.concat(maxs));
      if (y && past.length) {
        const top = maxs.map((v, i) => `${xAt(i, past.length).toFixed(1)},${y(v).toFixed(1)}`);
        const bottom = mins
          .map((v, i) => `${xAt(i, past.length).toFixed(1)},${y(v).toFixed(1)}`)
          .reverse();
        svg.append(svgEl("polygon", { points: top.concat(bottom).join(" ") }));
        const mean = ((s.history || {})[name] || []).slice(-past.length);
        const line = mean
          .map((v, i) => (isNumber(v) ? `${xAt(i, mean.length).toFixed(1)},${y(v).toFixed(1)}` : null))
          .filter((p) => p !== null);
        svg.append(svgEl("polyline", { points: line.join(" ") }));
      }
      box.append(svg);
      box.append(axis(past.map((p) => p.epoch)));
      return box;
    })
  );
}

// ---------------------------------------------------------------- decisions and sinks

function describeDecision(d) {
  const fields = Object.entries(d)
    .filter(([k]) => !["kind", "at", "made_by", "time"].includes(k))
    .map(([k, v]) => `${k}=${fmt(v)}`);
  return [d.kind, ...fields].join(" ");
}

function describeAt(at) {
  let text = String(at.phase || "?").replace(/_/g, " ");
  if (at.epoch !== undefined) text += ` ${at.epoch}`;
  if (at.step !== undefined) text += ` step ${at.step}`;
  return text;
}

// Kinds that repeat every epoch (a checkpoint per epoch, a backup per barrier): a run of
// them by one callback is one row, "save ×12", showing the newest.
const COLLAPSED = new Set(["save", "backup", "snapshot", "release"]);

function collapse(records) {
  const rows = [];
  for (const d of records.slice().reverse()) {  // newest first
    const previous = rows[rows.length - 1];
    if (previous && COLLAPSED.has(d.kind) && previous.d.kind === d.kind && previous.d.made_by === d.made_by) {
      previous.count += 1;
      previous.oldest = d;
    } else {
      rows.push({ d, count: 1, oldest: d });
    }
  }
  return rows;
}

function renderDecisions(records, count) {
  setText("decision-count", `(${records.length} most recent of ${count}, newest first)`);
  const body = document.querySelector("#decisions tbody");
  body.replaceChildren(
    ...collapse(records).map(({ d, count: n, oldest }) => {
      const row = el("tr", { "data-count": String(n), "data-kind": String(d.kind) });
      const when = new Date(d.time * 1000).toLocaleTimeString();
      row.append(el("td", { class: "time", "data-value": String(d.time) }, when));
      const what = n > 1 ? `${d.kind} ×${n} (newest: ${describeDecision(d)})` : describeDecision(d);
      row.append(el("td", { class: "what" }, what));
      const at = describeAt(d.at || {});
      row.append(el("td", { class: "at" }, n > 1 ? `${describeAt(oldest.at || {})} … ${at}` : at));
      row.append(el("td", { class: "by" }, d.made_by));
      return row;
    })
  );
}

function renderSinks(sinks) {
  const body = document.querySelector("#sinks tbody");
  const names = Object.keys(sinks).sort();
  body.replaceChildren(
    ...names.map((name) => {
      const row = el("tr", { "data-sink": name });
      row.append(el("td", { class: "name" }, name));
      const stats = el("td", { class: "stats" });
      const value = sinks[name];
      const entries = value && typeof value === "object" ? Object.entries(value) : [["", value]];
      for (const [key, v] of entries) {
        const item = el("span", { "data-key": key, "data-value": JSON.stringify(v) });
        item.append(el("b", {}, key), ` ${Array.isArray(v) ? v.join(", ") : fmt(v)}`);
        stats.append(item);
      }
      row.append(stats);
      return row;
    })
  );
}

// ---------------------------------------------------------------- live updates

function render(s) {
  renderSummary(s);
  renderWorkers(s.workers || [], s.batches_streamed !== false);
  renderMetrics(s.history || {}, s.history_epochs || []);
  renderSpread(s);
  renderDecisions(s.decisions || [], s.decision_count || 0);
  renderSinks(s.sinks || {});
  document.body.setAttribute("data-updated", String(Date.now()));
}

function connect() {
  const connection = document.getElementById("connection");
  const source = new EventSource("events");
  source.addEventListener("status", (event) => {
    connection.textContent = "live";
    connection.className = "live";
    render(JSON.parse(event.data));
  });
  source.addEventListener("bye", () => {
    source.close();
    connection.textContent = "ended (the coordinator shut down)";
    connection.className = "ended";
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      connection.textContent = "disconnected";
      connection.className = "ended";
    } else {
      connection.textContent = "reconnecting";
      connection.className = "reconnecting";
    }
  };
}

document.addEventListener("DOMContentLoaded", connect);
