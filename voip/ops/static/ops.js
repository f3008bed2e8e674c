// Operators' page: calls from /v1/ops/calls, kept current by the /v1/ops/live feed.
// Plain DOM, no library, no build step. Text from the server only ever goes in through
// textContent: user ids come from tokens and are not ours to trust.
"use strict";

const TOKEN_KEY = "voip.ops.token";
const LIVE_STATES = new Set(["ringing", "answered"]);
const RECENT_SHOWN = 50;
const SVG = "http://www.w3.org/2000/svg";

const calls = new Map(); // call_id -> call, as /v1/ops/calls returns them
let selected = null; // {call_id, timeline: [...]}
let socket = null;
let retryDelay = 500;
let summaryTimer = null;
let summaryRefresher = null;
let renderQueued = false;

const $ = (id) => document.getElementById(id);

// ---- access -------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class Unauthorised extends Error {}

async function api(path, method = "GET") {
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${token()}` } });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new Unauthorised(body.message || `refused (${response.status})`);
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (socket) {
    socket.onclose = null;
    socket.close();
    socket = null;
  }
  calls.clear();
  selected = null;
  setConnection("offline");
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function openBoard() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  try {
    await api("/v1/ops/summary").then(renderSummary); // checks the token before the socket
    connect();
    // The header's Redis notice changes without any call entry to trigger a refresh.
    summaryRefresher ||= setInterval(refreshSummary, 15000);
  } catch (error) {
    if (error instanceof Unauthorised) signOut(error.message);
    else setConnection("offline", String(error));
  }
}

// ---- live feed ----------------------------------------------------------------------

function setConnection(state, detail) {
  const badge = $("connection");
  badge.dataset.state = state;
  badge.textContent = state;
  badge.title = detail || "";
}

// The token never goes in a URL (URLs end up in logs): the feed is opened with a
// one-use ticket that the token buys just before.
async function connect() {
  setConnection("connecting");
  let ticket;
  try {
    ({ ticket } = await api("/v1/ops/live/ticket", "POST"));
  } catch (error) {
    if (error instanceof Unauthorised) signOut(error.message);
    else {
      setConnection("offline", String(error));
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    }
    return;
  }
  if ($("board").hidden) return; // signed out meanwhile
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/ops/live?ticket=${encodeURIComponent(ticket)}`);
  socket = ws;
  ws.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    if (frame.type === "hello") {
      // Subscribed: anything from now on arrives here, so the snapshot can be read.
      retryDelay = 500;
      setConnection("live");
      $("node").textContent = `node ${frame.node}`;
      reload();
    } else if (frame.type === "entry") {
      applyEntry(frame.call_id, frame.entry);
    }
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    setConnection("offline", "reconnecting");
    // A refused upgrade looks like any failure to the browser; the next ticket request
    // says why if the token is the reason.
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  };
}

async function reload() {
  try {
    const [live, recent] = await Promise.all([
      api("/v1/ops/calls?state=ringing&state=answered&limit=200"),
      api(`/v1/ops/calls?limit=${RECENT_SHOWN}`),
    ]);
    for (const call of [...live.calls, ...recent.calls]) calls.set(call.call_id, call);
    queueRender();
    refreshSummary();
    if (selected) select(selected.call_id);
  } catch (error) {
    if (error instanceof Unauthorised) signOut(error.message);
  }
}

function applyEntry(callId, entry) {
  let call = calls.get(callId);
  if (entry.event === "created") {
    call = {
      call_id: callId, state: "ringing", caller_user: entry.caller, caller_device: entry.device,
      callee_user: entry.callee, created_at: entry.at, origin_node: entry.node,
      answered_at: null, ended_at: null, answered_by_device: null, ended_by: null,
    };
    calls.set(callId, call);
  } else if (!call) {
    // A call from before the page opened, or older than the listing: fetch it whole.
    api(`/v1/ops/calls/${callId}`).then((detail) => {
      if (!calls.has(callId)) calls.set(callId, detail.call);
      queueRender();
    }).catch(() => {});
  } else if (entry.event === "state") {
    call.state = entry.to;
    if (entry.to === "answered") {
      call.answered_at = entry.at;
      call.answered_by_device = entry.device || null;
    } else {
      call.ended_at = entry.at;
      call.ended_by = entry.party;
    }
  }
  if (selected && selected.call_id === callId) {
    selected.timeline.push(entry);
    if (call) selected.call = call;
    renderDetail();
  }
  queueRender();
  if (["created", "state", "push", "status_check"].includes(entry.event)) refreshSummary();
}

// ---- counters -----------------------------------------------------------------------

function refreshSummary() {
  // Entries come in bursts (a call start is several): one summary per burst.
  clearTimeout(summaryTimer);
  summaryTimer = setTimeout(() => api("/v1/ops/summary").then(renderSummary).catch(() => {}), 400);
}

function renderSummary(summary) {
  const outcomes = Object.entries(summary.outcomes).map(([label, value]) => ({ label, value, cls: label }));
  barChart($("chart-outcomes"), outcomes);
  const pushes = Object.entries(summary.push_results).map(([label, value]) => ({
    label, value, cls: label === "accepted" ? "accepted" : "bad",
  }));
  barChart($("chart-pushes"), pushes, "no push sent in this window");
  const delay = summary.push_to_status_ms;
  barChart($("chart-delay"), delay.buckets.map((b) => ({ label: b.label, value: b.count })),
    "no push answered by a status check yet", delay.count === 0);
  $("delay-figures").textContent = delay.count
    ? `p50 ${seconds(delay.p50)} · p95 ${seconds(delay.p95)}` : "";
  renderRedis(summary.redis);
  renderWebhooks(summary.webhooks);
  $("late-checks").textContent = String(summary.late_pushes_caught.status_checks);
  const lateCalls = summary.late_pushes_caught.calls;
  $("late-calls").textContent = `${lateCalls} call${lateCalls === 1 ? "" : "s"}`;
  $("window").textContent = `last ${Math.round((summary.until - summary.since) / 60000)} min` +
    (summary.truncated ? ` (newest ${summary.calls})` : "");
  refreshSimulator();
}

function renderWebhooks(webhooks) {
  $("webhooks-failing").textContent = webhooks.urls ? String(webhooks.failing.length) : "off";
  $("webhooks-backlog").textContent = webhooks.urls
    ? `· ${webhooks.calls_due} call${webhooks.calls_due === 1 ? "" : "s"} due of ${webhooks.calls_filed} filed` : "";
  $("webhooks-failures").replaceChildren(...webhooks.failing.map((f) => {
    const item = document.createElement("li");
    item.textContent = `${f.url}: ${f.error} since ${new Date(f.failing_since).toISOString()}`;
    return item;
  }));
}

// ---- the bundled APNs and FCM simulators -------------------------------------------

function refreshSimulator() {
  api("/v1/ops/simulator/pushes").then(renderSimulator).catch(() => {});
  api("/v1/ops/simulator/fcm").then(renderFCMSimulator).catch(() => {});
}

function renderSimulator(sim) {
  // A node with real APNs credentials has no simulator to show.
  $("simulator").hidden = !sim.simulator;
  if (!sim.simulator) return;
  $("sim-note").textContent = sim.note;
  $("sim-count").textContent = String(sim.received);
  const body = $("sim-pushes").tBodies[0];
  body.replaceChildren(...sim.pushes.map(simulatorRow));
  $("sim-pushes").hidden = sim.pushes.length === 0;
  $("sim-empty").hidden = sim.pushes.length > 0;
}

function simulatorRow(push) {
  const payload = push.payload && typeof push.payload === "object" ? push.payload : {};
  const answer = push.status == null ? "no answer yet" : `${push.status}${push.reason ? ` ${push.reason}` : ""}`;
  const row = document.createElement("tr");
  row.dataset.apnsId = push.apns_id;
  row.append(
    cell(clock(push.received_at, true)),
    cell(`${push.headers["apns-push-type"] || "?"} ${payload.type || ""}`.trim(), "type"),
    cell(payload.call_id ? String(payload.call_id).slice(0, 8) : "", "id", payload.call_id || ""),
    cell(push.device_token_prefix || "", "id"),
    cell(answer, "answer"),
    cell(became(push), "became"),
    cell(payload.status_url ? String(payload.status_url) : "", "url", payload.status_url || ""),
  );
  return row;
}

function renderFCMSimulator(sim) {
  // A node with FCM credentials (or none, in production) has no FCM simulator to show.
  $("fcm-simulator").hidden = !sim.simulator;
  if (!sim.simulator) return;
  $("fcm-note").textContent = sim.note;
  $("fcm-count").textContent = String(sim.received);
  $("fcm-messages").tBodies[0].replaceChildren(...sim.messages.map(fcmRow));
  $("fcm-messages").hidden = sim.messages.length === 0;
  $("fcm-empty").hidden = sim.messages.length > 0;
}

function fcmRow(message) {
  const data = message.data && typeof message.data === "object" ? message.data : {};
  const android = message.android && typeof message.android === "object" ? message.android : {};
  const callId = shown(data.call_id);
  const collapseKey = shown(android.collapse_key);
  const answer = message.status == null ? "no answer yet"
    : `${message.status}${message.error ? ` ${message.error}` : ""}`;
  const row = document.createElement("tr");
  row.dataset.index = String(message.index);
  row.append(
    cell(clock(message.received_at, true)),
    cell(shown(data.type), "type"),
    cell(callId.slice(0, 8), "id", callId),
    cell(message.device_token_prefix || "", "id"),
    cell(answer, "answer"),
    cell(became(message), "became"),
    cell([shown(android.ttl), collapseKey.slice(0, 8)].filter(Boolean).join(" · "), "android",
      [android.ttl != null && `ttl ${shown(android.ttl)}`, collapseKey && `collapse_key ${collapseKey}`]
        .filter(Boolean).join(", ")),
    cell(shown(data.status_url), "url", shown(data.status_url)),
  );
  return row;
}

// What became of a push or a message, in both simulators' words.
function became(sent) {
  if (sent.delivery === "delivered") {
    return sent.late ? "delivered late" : sent.stored ? "delivered when online" : "delivered";
  }
  if (sent.delivery === "dropped" && sent.cause) return `dropped (${sent.cause})`;
  return sent.delivery;
}

// A refused message holds whatever its sender wrote, not only strings.
function shown(value) {
  if (value == null) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

// Redis came back without its data (the deployment epoch was lost): calls, devices and
// SIP bindings from before are gone. Shown until the next loss replaces it.
function renderRedis(redis) {
  const alert = $("redis-alert");
  const lost = redis && redis.data_lost;
  const warnings = (redis && redis.durability_warnings) || [];
  alert.hidden = !lost && warnings.length === 0;
  alert.dataset.kind = lost ? "lost" : "warning";
  alert.textContent = lost
    ? `Redis data lost: noticed ${new Date(lost.noticed_at).toLocaleString([], { hour12: false })}`
    : `Redis: ${warnings.length} durability warning${warnings.length === 1 ? "" : "s"}`;
  alert.title = [
    lost ? `data there at ${new Date(lost.last_seen_at).toLocaleString([], { hour12: false })}, ` +
      `noticed by ${lost.noticed_by}` : "",
    ...warnings,
  ].filter(Boolean).join("\n");
}

function barChart(svg, items, emptyText = "nothing yet", empty = items.length === 0) {
  svg.replaceChildren();
  const width = svg.clientWidth || 260;
  const rowHeight = Math.max(12, Math.min(22, 118 / Math.max(items.length, 1)));
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(items.length * rowHeight, 24)}`);
  svg.style.height = `${Math.max(items.length * rowHeight, 24)}px`;
  if (empty) {
    svg.append(svgText(0, 16, emptyText, "none"));
    return;
  }
  const labelWidth = Math.min(110, width * 0.42);
  const room = width - labelWidth - 40;
  const most = Math.max(...items.map((i) => i.value), 1);
  items.forEach((item, row) => {
    const y = row * rowHeight;
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("x", labelWidth);
    bar.setAttribute("y", y + 3);
    bar.setAttribute("height", rowHeight - 6);
    bar.setAttribute("width", Math.max(item.value ? 2 : 0, (room * item.value) / most));
    bar.setAttribute("rx", 2);
    if (item.cls) bar.classList.add(item.cls);
    const label = svgText(labelWidth - 6, y + rowHeight / 2 + 4, item.label);
    label.setAttribute("text-anchor", "end");
    const count = svgText(labelWidth + (room * item.value) / most + 6, y + rowHeight / 2 + 4,
      String(item.value), "value");
    svg.append(bar, label, count);
  });
}

function svgText(x, y, text, cls) {
  const node = document.createElementNS(SVG, "text");
  node.setAttribute("x", x);
  node.setAttribute("y", y);
  node.textContent = text;
  if (cls) node.classList.add(cls);
  return node;
}

// ---- calls --------------------------------------------------------------------------

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderCalls();
  });
}

function renderCalls() {
  const all = [...calls.values()].sort((a, b) => b.created_at - a.created_at);
  const live = all.filter((c) => LIVE_STATES.has(c.state));
  const recent = all.filter((c) => !LIVE_STATES.has(c.state)).slice(0, RECENT_SHOWN);
  fillTable($("live-calls"), live, (c) => since(c.created_at));
  fillTable($("recent-calls"), recent, (c) => (c.ended_at ? seconds(c.ended_at - c.created_at) : ""));
  $("live-count").textContent = String(live.length);
  $("live-empty").hidden = live.length > 0;
  $("recent-empty").hidden = recent.length > 0;
}

// Rows are kept and updated in place, never rebuilt: the table re-renders every second
// (ages tick), and a row replaced between mousedown and mouseup would swallow the click.
function fillTable(table, rows, lastColumn) {
  const body = table.tBodies[0];
  const existing = new Map([...body.rows].map((row) => [row.dataset.callId, row]));
  rows.forEach((call, index) => {
    const row = existing.get(call.call_id) || newRow(call);
    existing.delete(call.call_id);
    row.classList.toggle("selected", Boolean(selected && selected.call_id === call.call_id));
    const state = row.querySelector(".state");
    state.className = `state ${call.state}`;
    setText(state, call.state);
    setText(row.cells[1], party(call.caller_user, call.caller_device));
    setText(row.cells[2], party(call.callee_user, call.answered_by_device));
    setText(row.cells[5], lastColumn(call));
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
  });
  for (const stale of existing.values()) stale.remove();
  table.hidden = rows.length === 0;
}

function newRow(call) {
  const row = document.createElement("tr");
  row.dataset.callId = call.call_id;
  const state = document.createElement("span");
  state.className = "state";
  row.append(
    cell(call.call_id.slice(0, 8), "id", call.call_id),
    cell(""),
    cell(""),
    cell(state, "state-cell"),
    cell(clock(call.created_at, false)),
    cell("", "last"),
  );
  row.addEventListener("click", () => select(call.call_id));
  return row;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function cell(content, cls, title) {
  const td = document.createElement("td");
  if (typeof content === "string") td.textContent = content;
  else td.append(content);
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

function party(user, device) {
  return device ? `${user} · ${device}` : user;
}

// ---- one call -----------------------------------------------------------------------

async function select(callId) {
  try {
    const detail = await api(`/v1/ops/calls/${callId}`);
    selected = { call_id: callId, call: detail.call, timeline: detail.timeline };
    calls.set(callId, detail.call);
  } catch (error) {
    if (error instanceof Unauthorised) return signOut(error.message);
    selected = { call_id: callId, call: calls.get(callId), timeline: [], gone: true };
  }
  renderDetail();
  queueRender();
}

function renderDetail() {
  const { call, timeline, gone } = selected;
  $("detail-hint").textContent = gone ? "This call is past its retention." : "";
  $("detail-hint").hidden = !gone;
  const facts = $("detail-call");
  facts.hidden = !call;
  if (call) {
    facts.replaceChildren(...[
      ["call", call.call_id], ["state", call.state],
      ["from", party(call.caller_user, call.caller_device)],
      ["to", party(call.callee_user, call.answered_by_device)],
      ["placed on", call.origin_node],
    ].flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = term;
      dd.textContent = value || "—";
      return [dt, dd];
    }));
  }
  const first = timeline.length ? timeline[0].at : 0;
  $("timeline").replaceChildren(...timeline.map((entry) => {
    const item = document.createElement("li");
    item.className = "entry";
    item.dataset.event = entry.event;
    // Late only when a push caused the check: a bearer check after the end is someone asking.
    const answersPush = entry.via === "capability" || Boolean(entry.push_id);
    if (entry.event === "status_check" && !LIVE_STATES.has(entry.state) && answersPush) item.classList.add("late");
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = clock(entry.at, true);
    const offset = document.createElement("span");
    offset.className = "offset";
    offset.textContent = `+${seconds(entry.at - first)}`;
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = describe(entry);
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = [entry.node && `node ${entry.node}`, entry.device && `device ${entry.device}`]
      .filter(Boolean).join(" · ");
    item.append(when, what, offset, where);
    return item;
  }));
}

// What an entry says, in words. Kinds this page does not know yet are shown whole.
function describe(e) {
  switch (e.event) {
    case "created": {
      const targets = e.targets || [];
      return `${e.caller} calls ${e.callee}: ${targets.length} device(s) to ring` +
        (targets.length ? ` (${targets.join(", ")})` : "");
    }
    case "state": {
      const by = e.party === "system" ? "system" : e.party;
      const note = e.note ? ` — ${Object.values(e.note).join(", ")}` : "";
      return `${e.from} → ${e.to} (${e.action} by ${by})${note}`;
    }
    case "ringing":
      return `${e.device} is ringing`;
    case "delivered":
      return `${e.type} delivered to ${e.device}`;
    case "status_check": {
      const told = e.end_call ? ` — told to end the call (${e.reason})` : LIVE_STATES.has(e.state) ? "" : " — told to end the call";
      const late = e.late_ms != null ? `, ${(e.late_ms / 1000).toFixed(1)} s after it ended` : "";
      return `status check via ${e.via}: call was ${e.state}${told}${late}`;
    }
    case "push": {
      const android = e.platform === "android";
      const what = `${android ? "FCM data" : e.push_type === "alert" ? "alert" : "VoIP"} push${e.kind ? ` (${e.kind})` : ""}`;
      const answer = e.status != null ? `${e.status}${e.reason ? ` ${e.reason}` : ""}`
        : e.reason || "no answer";
      // "delivered": how an APNs 200 was recorded before it was called what it is.
      const outcome = e.outcome === "delivered" ? "accepted" : e.outcome;
      const extra = [e.environment, e.latency_ms != null && `${Math.round(e.latency_ms)} ms`, outcome,
        e.attempts > 1 && `${e.attempts} attempts`].filter(Boolean).join(", ");
      return `${what} → ${android ? "FCM" : "APNs"} ${answer}${extra ? ` (${extra})` : ""}`;
    }
    case "token":
      return e.platform === "android"
        ? `FCM token ${e.dropped ? "dropped" : "kept"} after FCM said ${e.reason}`
        : `VoIP token ${e.dropped ? "dropped" : "kept"} after APNs said ${e.reason}`;
    default: {
      const rest = Object.entries(e).filter(([k]) => !["at", "event", "node", "device"].includes(k));
      return `${e.event}: ${rest.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")}`;
    }
  }
}

// ---- time ---------------------------------------------------------------------------

function clock(ms, precise) {
  if (!ms) return "";
  const date = new Date(ms);
  const text = date.toLocaleTimeString([], { hour12: false });
  return precise ? `${text}.${String(date.getMilliseconds()).padStart(3, "0")}` : text;
}

function seconds(ms) {
  if (ms == null) return "";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 0)} s`;
}

function since(ms) {
  return seconds(Math.max(0, Date.now() - ms));
}

// ---- start --------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    openBoard();
  });
  $("sign-out").addEventListener("click", () => signOut());
  setInterval(() => {
    if (!$("board").hidden) queueRender(); // ages tick
  }, 1000);
  if (token()) openBoard();
  else signOut();
});
