// llmgw's operator page: models and engines, the queue, request activity and engine logs.
// It reads the gateway's own routes with fetch() (so an API key can go in a header), and
// GET /events as a stream for live changes; every value shown is set with textContent.
"use strict";

const KEY = "llmgw-api-key";
const ACTIVITY_ROWS = 100;
const LOG_LINES = 500;
const state = { models: [], running: { engines: [], queue: [] }, keys: [], requests: new Map(), logModel: "" };

// ----------------------------------------------------------------------------- HTTP

class NeedKey extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = localStorage.getItem(KEY);
  if (key) headers["Authorization"] = "Bearer " + key;
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) { askKey(); throw new NeedKey("API key needed"); }
  return resp;
}

async function json(path, options) {
  const resp = await api(path, options);
  const body = await resp.json();
  if (!resp.ok) throw new Error((body.error && body.error.message) || resp.statusText);
  return body;
}

function askKey() {
  document.getElementById("key-form").hidden = false;
  document.getElementById("key").focus();
}

function showError(message) {
  const p = document.getElementById("error");
  p.textContent = message || "";
  p.hidden = !message;
}

// ----------------------------------------------------------------------------- DOM helpers

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function num(value, digits = 0) { return value == null ? "" : Number(value).toFixed(digits); }
function seconds(value) {
  if (value == null) return "";
  const s = Math.round(value);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return (s / 3600).toFixed(1) + " h";
}
function mib(memory) {
  return Object.entries(memory || {}).map(([pool, v]) => pool + " " + Math.round(v) + " MiB").join(", ");
}

// ----------------------------------------------------------------------------- models and queue

async function refresh() {
  try {
    const [models, running, history] = await Promise.all(
      [json("/v1/models"), json("/running"), json("/api/requests?limit=1")]);
    state.models = models.data.filter((m) => !m.alias_of);
    state.running = running;
    state.keys = history.keys || [];
    renderModels();
    renderPeers();
    renderQueue();
    renderKeys();
    renderLogChoices();
    showError("");
  } catch (err) {
    if (!(err instanceof NeedKey)) showError("cannot read the gateway: " + err.message);
  }
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 200);
}

function statusCell(model) {
  const status = model.status || { value: "unloaded" };
  const td = el("td", { class: "status" });
  const value = status.failed && status.value === "unloaded" ? "failed" : status.value;
  const progress = status.progress;
  let label = value;
  if (value === "loading" && progress) label += progress.percent != null ? " " + progress.percent + "%" : " " + seconds(progress.elapsed);
  td.append(el("span", { class: "badge state-" + value, text: label }));
  if (value === "loading" && progress && progress.percent != null) td.append(el("progress", { max: 100, value: progress.percent }));
  return td;
}

// A model this node serves itself (its name comes first in served_by when peers serve it too).
function isLocal(model) { return !model.served_by || model.served_by[0] === state.running.node; }

function renderModels() {
  const engines = new Map(state.running.engines.map((e) => [e.model, e]));
  const rows = state.models.map((model) => {
    const engine = engines.get(model.id);
    const status = model.status || { value: "unloaded" };
    const loaded = status.value !== "unloaded";
    const name = el("td", {}, el("strong", { text: model.id }));
    if (model.aliases && model.aliases.length) name.append(el("span", { class: "muted", text: " " + model.aliases.join(", ") }));
    if (model.served_by) name.append(el("span", { class: "muted served-by", text: " on " + model.served_by.join(", ") }));
    // Only this node's models are loaded or unloaded from here: a peer decides for its own.
    const action = !isLocal(model) ? null : loaded
      ? el("button", { class: "unload", type: "button", text: "Unload", "data-model": model.id })
      : el("button", { class: "load", type: "button", text: "Load", "data-model": model.id });
    return el("tr", { "data-model": model.id },
      name,
      statusCell(model),
      el("td", { text: engine ? String(engine.variant) : "" }),
      el("td", { class: "num", text: engine ? String(engine.context) : "max " + model.context_length }),
      el("td", { text: engine ? mib(engine.memory_mib) : "" }),
      el("td", { class: "num", text: engine ? String(engine.in_flight) : "" }),
      el("td", { text: engine ? seconds(engine.idle_unload_in) : "" }),
      el("td", {}, action));
  });
  fill(document.querySelector("#models tbody"), rows);
}

function renderPeers() {
  const peers = state.running.peers || [];
  document.getElementById("peers-section").hidden = !peers.length;
  document.getElementById("node-name").textContent = state.running.node ? "(this node: " + state.running.node + ")" : "";
  fill(document.querySelector("#peers tbody"), peers.map((p) => el("tr", { "data-peer": p.name },
    el("td", {}, el("strong", { text: p.name })),
    el("td", {}, el("span", { class: "badge breaker-" + p.breaker.state, text: p.breaker.state + (p.draining ? ", draining" : "") })),
    el("td", { class: "muted", text: p.url }),
    el("td", { text: p.models.join(", ") }),
    el("td", { text: p.loaded.join(", ") }),
    el("td", { class: "num", text: String(p.in_flight) }),
    el("td", { class: "num", text: String(p.queued) }),
    el("td", { class: "num", text: String(p.forwarded) }),
    el("td", { class: "num", text: String(p.failures) }),
    el("td", { class: "muted", text: p.breaker.last_error || (p.key_refused ? "refused our api_key" : "") }))));
}

function renderQueue() {
  const queue = state.running.queue || [];
  document.getElementById("queue-count").textContent = queue.length ? "(" + queue.length + ")" : "(empty)";
  fill(document.querySelector("#queue tbody"), queue.map((t, i) => el("tr", {},
    el("td", { class: "num", text: String(i + 1) }),
    el("td", { text: t.model + (t.priority === "batch" ? " (batch)" : "") }),
    el("td", { text: t.phase }),
    el("td", { text: seconds(t.waiting) }),
    el("td", { class: "num", text: String(t.min_context) }),
    el("td", { text: t.blocked_by || "" }))));
}

function limits(k) {
  const parts = [];
  if (k.requests_per_minute != null) parts.push(k.requests_per_minute + "/min");
  if (k.max_concurrent != null) parts.push(k.max_concurrent + " at once");
  if (k.admin) parts.push("admin");
  return parts.join(", ");
}

// Each key by its name (the key itself is never sent to the page): usage and limits.
function renderKeys() {
  document.getElementById("keys-section").hidden = state.keys.length === 0;
  fill(document.querySelector("#keys tbody"), state.keys.map((k) => el("tr", { "data-key": k.key },
    el("td", {}, el("strong", { text: k.key })),
    el("td", { text: k.priority }),
    el("td", { text: k.models ? k.models.join(", ") : "all" }),
    el("td", { class: "num", text: String(k.requests) }),
    el("td", { class: "num", text: String(k.prompt_tokens) }),
    el("td", { class: "num", text: String(k.generated_tokens) }),
    el("td", { class: "num", text: k.tokens_today + (k.tokens_per_day != null ? " / " + k.tokens_per_day : "") }),
    el("td", { class: k.rate_limited ? "num status-error" : "num", text: String(k.rate_limited) }),
    el("td", { class: "num", text: String(k.in_flight) }),
    el("td", { class: "muted", text: limits(k) }))));
}

async function act(kind, model, button) {
  button.disabled = true;
  try {
    await json("/" + kind, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model }) });
    showError("");
  } catch (err) {
    if (!(err instanceof NeedKey)) showError(kind + " " + model + ": " + err.message);
  } finally {
    button.disabled = false;
    refresh();
  }
}

// ----------------------------------------------------------------------------- activity

function requestRow(r) {
  const when = new Date(r.started * 1000).toLocaleTimeString();
  const done = r.status != null;
  const status = done ? String(r.status) + (r.client_left ? " (left)" : "") : "…";
  return el("tr", { class: done ? "" : "in-flight", "data-id": r.id },
    el("td", { text: when }),
    el("td", { class: "muted", text: r.id.slice(0, 12) }),
    el("td", { text: r.key || "" }),
    el("td", { text: r.model }),
    el("td", { text: r.route }),
    el("td", { class: done && r.status >= 400 ? "status-error" : "", text: status }),
    el("td", { class: "num", text: num(r.prompt_tokens) }),
    el("td", { class: "num", text: num(r.generated_tokens) }),
    el("td", { class: "num", text: num(r.prefill_tps, 1) }),
    el("td", { class: "num", text: num(r.decode_tps, 1) }),
    el("td", { class: "num", text: done ? num(r.duration, 2) + " s" : "" }));
}

function renderActivity() {
  const rows = [...state.requests.values()].sort((a, b) => b.started - a.started).slice(0, ACTIVITY_ROWS);
  fill(document.querySelector("#activity tbody"), rows.map(requestRow));
}

function remember(record) {
  state.requests.set(record.id + "@" + record.started, record);
  while (state.requests.size > ACTIVITY_ROWS) state.requests.delete(state.requests.keys().next().value);
}

async function loadActivity() {
  try {
    const history = await json("/api/requests?limit=" + ACTIVITY_ROWS);
    state.requests.clear();
    for (const r of history.requests.slice().reverse()) remember(r);
    for (const r of history.in_flight) remember(r);
    state.keys = history.keys || [];
    renderActivity();
    renderKeys();
  } catch (err) { /* shown by refresh() */ }
}

// ----------------------------------------------------------------------------- engine log

function renderLogChoices() {
  const select = document.getElementById("log-model");
  const names = state.models.filter(isLocal).map((m) => m.id);
  if (!state.logModel && names.length) { state.logModel = names[0]; loadLog(); }
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  }
  select.value = state.logModel;
}

function appendLog(lines) {
  const pre = document.getElementById("log");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  for (const line of lines) pre.append(document.createTextNode(line + "\n"));
  while (pre.childNodes.length > LOG_LINES) pre.removeChild(pre.firstChild);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

async function loadLog() {
  const pre = document.getElementById("log");
  pre.replaceChildren();
  if (!state.logModel) return;
  try {
    const tail = await json("/api/logs?model=" + encodeURIComponent(state.logModel) + "&limit=" + LOG_LINES);
    appendLog(tail.lines.map((l) => l.line));
  } catch (err) { /* shown by refresh() */ }
}

// ----------------------------------------------------------------------------- live events

function setConn(text) {
  const conn = document.getElementById("conn");
  conn.textContent = text;
  conn.className = "badge conn-" + text;
}

function handle(kind, data) {
  if (kind === "hello" || kind === "dropped") { refresh(); loadActivity(); loadLog(); }
  else if (kind === "engine" || kind === "queue" || kind === "peer") refreshSoon();
  else if (kind === "request_start" || kind === "request_end") {
    remember(data);  // an end replaces its start (same id and start time)
    renderActivity();
    refreshSoon();
  } else if (kind === "log" && data.model === state.logModel) appendLog([data.line]);
}

async function events() {
  // EventSource cannot send an Authorization header: read the stream with fetch instead.
  for (;;) {
    try {
      const resp = await api("/events?logs=1", { headers: { Accept: "text/event-stream" } });
      if (resp.status === 403) { setConn("down"); return; }  // not an admin key: refresh() says so
      if (!resp.ok || !resp.body) throw new Error("events: " + resp.status);
      setConn("live");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) handle(kind, JSON.parse(data));
        }
      }
    } catch (err) {
      if (err instanceof NeedKey) { setConn("down"); return; }
    }
    setConn("down");
    await new Promise((resolve) => setTimeout(resolve, 2000));
    setConn("connecting");
  }
}

// ----------------------------------------------------------------------------- start

function start() {
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("key");
    if (input.value) localStorage.setItem(KEY, input.value);
    else localStorage.removeItem(KEY);
    input.value = "";
    document.getElementById("key-form").hidden = true;
    refresh(); loadActivity(); events();
  });
  document.getElementById("key-change").addEventListener("click", askKey);
  document.getElementById("log-model").addEventListener("change", (ev) => { state.logModel = ev.target.value; loadLog(); });
  document.querySelector("#models tbody").addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-model]");
    if (button) act(button.classList.contains("unload") ? "unload" : "load", button.dataset.model, button);
  });
  refresh();
  loadActivity();
  events();
}

document.addEventListener("DOMContentLoaded", start);
