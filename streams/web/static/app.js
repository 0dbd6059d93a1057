// Tocsin's incident page: the board (/) and one incident (/incidents/ID), kept live over
// the worker's server-sent events (/v1/stream). No external assets, no framework.
//
// Untrusted text (service names, alert titles, notes, error codes) is only ever written
// as text: every node is made with el() below, which sets textContent and attributes,
// never HTML. Links are made only from http(s) URLs.
"use strict";

const TOKEN_KEY = "tocsin.token";  // kept for the tab (sessionStorage)
const BY_KEY = "tocsin.by";        // the name actions are taken under (localStorage)

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  lastEventId: null,
  incidents: new Map(),   // the board's rows by incident id
  view: null,             // "board" or "incident"
  incidentId: null,
  tokenWaiters: [],
};

// ---------------------------------------------------------------- small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function safeUrl(url) {
  try {
    const parsed = new URL(String(url));
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch (_) {
    return null;
  }
}

function iso(ms) {
  return typeof ms === "number" ? new Date(ms).toISOString().replace(".000Z", "Z") : "";
}

function percent(x) {
  return typeof x === "number" ? `${(x * 100).toFixed(x < 0.1 ? 2 : 1)}%` : "–";
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function main() {
  return document.getElementById("main");
}

function replaceMain(...nodes) {
  main().replaceChildren(...nodes);
}

// ---------------------------------------------------------------- the API, with a token

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (state.token) opts.headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, opts);
  if (response.status === 401) {
    askToken();
    throw new ApiError(401, "this worker wants an API token");
  }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${path} answered ${response.status}`;
    const error = new ApiError(response.status, message);
    error.body = body;
    throw error;
  }
  return body;
}

function askToken() {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.body.dataset.token = "needed";
}

function tokenGiven() {
  const waiters = state.tokenWaiters;
  state.tokenWaiters = [];
  for (const resolve of waiters) resolve();
}

function waitForToken() {
  return new Promise((resolve) => state.tokenWaiters.push(resolve));
}

// ---------------------------------------------------------------- the live stream

function setLive(on, why) {
  const badge = document.getElementById("live");
  badge.textContent = on ? "live" : why || "reconnecting…";
  badge.className = on ? "live on" : "live off";
  document.body.dataset.live = on ? "on" : "off";
}

function parseEvent(block) {
  const event = { id: null, name: "message", data: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.name = value;
    else if (field === "data") event.data += (event.data ? "\n" : "") + value;
  }
  return event;
}

async function stream() {
  // fetch, not EventSource: EventSource cannot send the Authorization header.
  for (;;) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (state.token) headers.Authorization = `Bearer ${state.token}`;
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/v1/stream", { headers, cache: "no-store" });
      if (response.status === 401) {
        setLive(false, "needs a token");
        askToken();
        await waitForToken();
        continue;
      }
      if (!response.ok || !response.body) throw new Error(`stream: ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (block.trim()) received(parseEvent(block));
        }
      }
    } catch (_) {
      // the worker restarted or the network dropped: reconnect below
    }
    setLive(false);
    await sleep(1500);
  }
}

function received(event) {
  if (event.id) state.lastEventId = event.id;
  if (event.name === "hello") {
    setLive(true);
    return;
  }
  setLive(true);
  if (event.name === "reset") {
    show();
    return;
  }
  let data = null;
  try {
    data = JSON.parse(event.data);
  } catch (_) {
    return;
  }
  if (event.name === "incident") onIncident(data);
  else if (event.name === "report") onReport(data);
}

function onIncident(change) {
  const row = state.incidents.get(change.incident_id) || {};
  if ((row.seq || 0) <= change.seq) {
    Object.assign(row, {
      incident_id: change.incident_id, family: change.family, env: change.env,
      service: change.service, status: change.status, phase: change.phase,
      onset_ms: change.onset_ms, peak_count: change.peak_count,
      error_count: change.error_count, seq: change.seq,
    });
  }
  if (change.kind === "acknowledged" && change.actor) row.acknowledged_by = change.actor;
  state.incidents.set(change.incident_id, row);
  if (state.view === "board") drawBoard();
  else if (state.view === "incident" && state.incidentId === change.incident_id) {
    loadIncident(change.incident_id, null);
  }
}

function onReport(version) {
  const row = state.incidents.get(version.incident_id);
  if (row) {
    row.cause_kind = version.cause_kind;
    row.cause_confidence = version.cause_confidence;
    row.report_hash = version.report_hash;
  }
  if (state.view === "board") drawBoard();
  else if (state.view === "incident" && state.incidentId === version.incident_id) {
    loadIncident(version.incident_id, version.report_hash);
  }
}

// ---------------------------------------------------------------- the board

async function showBoard() {
  state.view = "board";
  document.title = "Tocsin: incidents";
  const body = await apiJson("/v1/incidents");
  state.incidents = new Map();
  for (const row of body.incidents || []) state.incidents.set(row.incident_id, row);
  drawBoard();
}

function isOpen(row) {
  return row.status !== "resolved";
}

function drawBoard() {
  const rows = [...state.incidents.values()].sort((a, b) =>
    (isOpen(b) - isOpen(a)) || ((b.onset_ms || 0) - (a.onset_ms || 0)) ||
    String(a.incident_id).localeCompare(String(b.incident_id)));
  const open = rows.filter(isOpen).length;
  const table = el("table", { class: "board", id: "board" },
    el("thead", null, el("tr", null, ...["Incident", "Status", "Phase", "Onset", "Errors",
      "Peak", "Likely cause", "Acknowledged by"].map((h) => el("th", { text: h })))),
    el("tbody", null, ...rows.map(boardRow)));
  replaceMain(
    el("h1", { text: `Incidents: ${open} open, ${rows.length - open} resolved` }),
    rows.length ? table : el("p", { class: "muted", id: "empty", text: "No incidents yet." }));
  document.body.dataset.view = "board";
}

function boardRow(row) {
  const cause = row.cause_kind ? `${row.cause_kind} (${row.cause_confidence || "?"})` : "";
  return el("tr", { class: isOpen(row) ? "open" : "resolved", "data-incident": row.incident_id },
    el("td", null, el("a", { href: `/incidents/${encodeURIComponent(row.incident_id)}`,
      text: row.family || row.incident_id })),
    el("td", null, el("span", { class: `badge ${row.status}`, text: row.status })),
    el("td", { text: row.phase || "" }),
    el("td", { text: iso(row.onset_ms) }),
    el("td", { class: "num", text: row.error_count ?? "" }),
    el("td", { class: "num", text: row.peak_count ?? "" }),
    el("td", { text: cause }),
    el("td", { class: "who", text: row.acknowledged_by || "" }));
}

// ---------------------------------------------------------------- one incident

async function showIncident(incidentId) {
  state.view = "incident";
  state.incidentId = incidentId;
  document.title = `Tocsin: ${incidentId}`;
  await loadIncident(incidentId, null);
}

async function loadIncident(incidentId, wantHash) {
  // The report endpoint reads a copy of the database refreshed every half second: when
  // the stream told of a version it may not be there yet, so ask again a few times.
  let incident = null;
  let report = null;
  for (let attempt = 0; attempt < 8; attempt++) {
    incident = await apiJson(`/v1/incidents/${encodeURIComponent(incidentId)}`);
    try {
      report = await apiJson(`/v1/incidents/${encodeURIComponent(incidentId)}/report`);
    } catch (error) {
      if (error.status !== 404) throw error;
      report = null;
    }
    if (!wantHash || (report && report.report_hash === wantHash)) break;
    await sleep(300);
  }
  if (state.view !== "incident" || state.incidentId !== incidentId) return;
  drawIncident(incident, report);
}

function drawIncident(incident, report) {
  const sections = [
    el("p", null, el("a", { href: "/", text: "← all incidents" })),
    el("h1", { id: "family", text: incident.family }),
    el("p", { class: "facts" },
      el("span", { class: `badge ${incident.status}`, id: "status", text: incident.status }),
      " ", el("span", { class: "phase", id: "phase", text: `phase ${incident.phase || "triggered"}` }),
      ` · ${incident.env} · onset ${iso(incident.onset_ms)} · ${incident.error_count} errors, peak window ${incident.peak_count}`),
    actionsBar(incident),
  ];
  if (report) {
    sections.push(causeSection(report), timelineSection(report.timeline),
      evidenceSection(report), spreadSection(report), checksSection(report));
  } else {
    sections.push(el("p", { class: "muted", text: "No triage report yet." }));
  }
  sections.push(responseSection(incident));
  if (report) {
    sections.push(el("p", { class: "hash" }, "report ",
      el("code", { id: "report-hash", text: report.report_hash })));
  }
  replaceMain(...sections);
  document.body.dataset.view = "incident";
  document.body.dataset.reportHash = report ? report.report_hash : "";
}

function actionsBar(incident) {
  const by = el("input", { id: "by", placeholder: "your name", value: localStorage.getItem(BY_KEY) || "",
    autocomplete: "name", maxlength: 200 });
  const note = el("textarea", { id: "note", rows: 2, placeholder: "a note", maxlength: 4000 });
  const status = el("span", { id: "action-status", class: "muted", role: "status" });
  const act = (action) => async () => {
    const name = by.value.trim();
    if (!name) {
      status.textContent = "Say who you are first.";
      by.focus();
      return;
    }
    localStorage.setItem(BY_KEY, name);
    const body = { action, by: name };
    if (note.value.trim()) body.note = note.value.trim();
    if (action === "annotate" && !body.note) {
      status.textContent = "Write the note first.";
      return;
    }
    status.textContent = `${action}…`;
    try {
      const answer = await apiJson(`/v1/incidents/${encodeURIComponent(incident.incident_id)}/actions`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
        body: JSON.stringify(body),
      });
      note.value = "";
      status.textContent = answer.kind ? `${answer.kind} by ${answer.by}` : `${action} written, not decided yet`;
      loadIncident(incident.incident_id, null);
    } catch (error) {
      const rule = error.body && error.body.rule ? ` (${error.body.rule})` : "";
      status.textContent = `${error.message}${rule}`;
    }
  };
  const copy = async () => {
    const response = await api(`/v1/incidents/${encodeURIComponent(incident.incident_id)}/report?format=md`);
    const markdown = await response.text();
    try {
      await navigator.clipboard.writeText(markdown);
      status.textContent = "Markdown report copied.";
    } catch (_) {
      const box = el("textarea", { class: "copy", rows: 8, readonly: true });
      box.value = markdown;
      status.replaceChildren("Copy it from here: ", box);
      box.select();
    }
  };
  return el("div", { class: "actions" },
    el("label", null, "By ", by),
    el("button", { id: "acknowledge", onclick: act("acknowledge"), text: "Acknowledge" }),
    el("button", { id: "mitigate", onclick: act("mitigate"), text: "Mitigate" }),
    el("button", { id: "resolve", onclick: act("resolve"), text: "Resolve" }),
    el("div", { class: "note" }, note,
      el("button", { id: "add-note", onclick: act("annotate"), text: "Add note" })),
    el("button", { id: "copy", onclick: copy, text: "Copy Markdown" }),
    status);
}

function causeSection(report) {
  const cause = report.cause || {};
  return el("section", { id: "cause" },
    el("h2", { text: "Likely cause" }),
    el("p", null, el("strong", { text: cause.kind || "unknown" }),
      ` (${cause.confidence || "?"}, rule ${cause.rule_id || "?"})`),
    cause.explanation ? el("p", { text: cause.explanation }) : null);
}

function evidenceSection(report) {
  const alerts = new Map((report.alerts || []).map((a) => [a.id, a]));
  const rows = (report.evidence || []).map((row) => {
    const alert = alerts.get(row.id);
    const url = alert ? safeUrl(alert.url) : null;
    const summary = url ? el("a", { href: url, rel: "noopener noreferrer", target: "_blank", text: row.summary })
      : el("span", { text: row.summary });
    return el("tr", null, el("td", { text: iso(row.time_ms) }), el("td", { text: row.kind }),
      el("td", { text: row.source }), el("td", { class: "summary" }, summary));
  });
  return el("section", { id: "evidence" },
    el("h2", { text: "Evidence" }),
    el("table", null,
      el("thead", null, el("tr", null, ...["time", "kind", "source", "summary"].map((h) => el("th", { text: h })))),
      el("tbody", null, ...rows)));
}

function spreadSection(report) {
  const snaps = report.snapshots || {};
  const propagation = snaps.propagation || {};
  const blast = snaps.blast || {};
  const origin = propagation.origin;
  const path = (propagation.path || []).map((hop) => hop.service).filter(Boolean);
  const items = [];
  if (origin) items.push(el("li", null, "Origin: ", el("strong", { text: `${origin.service || "?"} ${origin.step || ""}` })));
  if (path.length) items.push(el("li", { text: `Path: ${path.join(" → ")}` }));
  if (typeof blast.affected_requests === "number") {
    items.push(el("li", { text: `Affected: ${blast.affected_requests} requests` +
      (typeof blast.distinct_users === "number" ? `, ${blast.distinct_users} users` : "") }));
  }
  for (const [name, count] of blast.top_services || []) items.push(el("li", { text: `${name}: ${count}` }));
  if (!items.length) items.push(el("li", { class: "muted", text: "No failing traces seen for it." }));
  return el("section", { id: "spread" }, el("h2", { text: "Propagation and blast radius" }), el("ul", null, ...items));
}

function checksSection(report) {
  return el("section", { id: "checks" }, el("h2", { text: "Next checks" }),
    el("ol", null, ...(report.next_checks || []).map((check) => el("li", { text: check }))));
}

function responseSection(incident) {
  const actions = incident.actions || [];
  const items = actions.map((a) => el("li", null,
    el("span", { class: "when", text: iso(a.at_ms) }), " ",
    el("strong", { text: a.kind }), " by ", el("span", { class: "who", text: a.actor || "?" }),
    a.title ? el("span", { text: `: ${a.title} (${a.hypothesis_status || "?"})` }) : null,
    a.note ? el("blockquote", { text: a.note }) : null));
  return el("section", { id: "response" }, el("h2", { text: "Actions and notes" }),
    items.length ? el("ul", null, ...items) : el("p", { class: "muted", text: "Nobody has acted yet." }));
}

// ---------------------------------------------------------------- the timeline chart

function timelineSection(timeline) {
  if (!timeline || !(timeline.points || []).length) {
    return el("section", { id: "timeline" }, el("h2", { text: "Timeline" }),
      el("p", { class: "muted", text: "No timeline yet." }));
  }
  const s = timeline.summary || {};
  const rate = s.error_rate || {};
  const p95 = s.p95_ms || {};
  const note = timeline.complete ? "" : " (so far)";
  return el("section", { id: "timeline" },
    el("h2", { text: `Timeline${note}` }),
    chart(timeline, "error_rate", "error rate", percent),
    chart(timeline, "p95_ms", "p95 latency", (v) => (typeof v === "number" ? `${Math.round(v)} ms` : "–")),
    el("p", { class: "muted", text:
      `error rate ${percent(rate.start)} before, peak ${percent(rate.max)}, ${percent(rate.end)} after · ` +
      `p95 ${p95.start ?? "–"} ms before, peak ${p95.max ?? "–"} ms, ${p95.end ?? "–"} ms after` +
      (timeline.truncated ? ` · ${timeline.omitted} points left out of the series` : "") }));
}

function chart(timeline, field, label, format) {
  const W = 720, H = 120, PAD = 4;
  const points = timeline.points;
  const t0 = timeline.from_ms, t1 = Math.max(timeline.to_ms, t0 + 1);
  const values = points.map((p) => p[field]).filter((v) => typeof v === "number");
  const top = Math.max(...values, 0) || 1;
  const x = (t) => PAD + (W - 2 * PAD) * ((t - t0) / (t1 - t0));
  const y = (v) => H - PAD - (H - 2 * PAD) * (v / top);
  let d = "";
  let pen = false;
  const dots = [];
  for (const p of points) {
    const v = p[field];
    if (typeof v !== "number") {
      pen = false;
      continue;
    }
    const px = x(p.t_ms + timeline.bucket_ms / 2).toFixed(1);
    const py = y(v).toFixed(1);
    d += `${pen ? "L" : "M"}${px},${py} `;
    dots.push(svg("circle", { cx: px, cy: py, r: 2.5, class: `dot ${field}` }));
    pen = true;
  }
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    preserveAspectRatio: "none", "aria-label": `${label} over the incident` });
  box.append(svg("rect", { x: 0, y: 0, width: W, height: H, class: "frame" }));
  for (const [ms, cls] of [[timeline.onset_ms, "onset"], [timeline.resolved_ms, "resolved"]]) {
    if (typeof ms === "number") box.append(svg("line", { x1: x(ms), x2: x(ms), y1: 0, y2: H, class: cls }));
  }
  if (d) box.append(svg("path", { d: d.trim(), class: `series ${field}` }), ...dots);
  return el("figure", { class: "chart" }, box,
    el("figcaption", { text: `${label}: peak ${format(top === 1 && !values.length ? null : top)} · ` +
      `${iso(timeline.from_ms)} → ${iso(timeline.to_ms)} (onset and resolution marked)` }));
}

// ---------------------------------------------------------------- routing

async function show() {
  const path = location.pathname;
  try {
    if (path.startsWith("/incidents/")) await showIncident(decodeURIComponent(path.slice("/incidents/".length)));
    else await showBoard();
  } catch (error) {
    replaceMain(el("p", { class: "error", id: "error", text: error.message }));
    if (error.status === 401) {
      await waitForToken();
      show();
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    form.hidden = true;
    delete document.body.dataset.token;
    tokenGiven();
  });
  if (state.token) document.getElementById("token").value = state.token;
  show();
  stream();
});
