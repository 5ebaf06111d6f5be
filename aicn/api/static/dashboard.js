// The aicn dashboard: polls the node's state and renders it.  No framework,
// no inline code (the page's Content-Security-Policy is "default-src 'self'"),
// and every value from the node goes in as text, never as HTML.
"use strict";

const STATE_URL = "/api/v0/debug/state";
const REFRESH_MS = 3000;

function $(id) {
  return document.getElementById(id);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fill(container, children) {
  container.replaceChildren(...children);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function mono(text) {
  return el("span", text, "mono");
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  const h = Math.floor(s / 3600);
  return h + " h " + Math.floor((s % 3600) / 60) + " min";
}

function renderNode(node) {
  $("peer-id").textContent = node.peer_id;
  $("agent").textContent = node.agent_version + " (" + node.protocol_version + ")";
  const reach = $("reachability");
  reach.textContent = node.reachability;
  reach.className = { public: "ok", private: "bad" }[node.reachability] || "muted";
  $("uptime").textContent = seconds(node.uptime);
  $("topic").textContent = node.topic + (node.collector ? " (collector)" : "");
  const dht = node.dht;
  $("dht").textContent = dht
    ? dht.mode + " mode, " + (dht.serving ? "serving" : "client") + ", " +
      dht.routing_table + " peers in the routing table"
    : "off";
  const relay = node.relay_service;
  $("relay-service").textContent = relay
    ? relay.reservations + " reservations, " + relay.circuits + " circuits, " +
      relay.bytes_relayed + " bytes relayed"
    : "off";
  fill($("addresses"), node.addresses.map((a) => el("li", a, "mono")));
  fill($("relays"), node.relay_reservations.length
    ? node.relay_reservations.map((r) =>
      el("li", r.relay + " (expires in " + seconds(r.expires_in) + ")", "mono"))
    : [el("li", "none", "muted")]);
}

function renderPeers(peers) {
  $("peer-count").textContent = "(" + peers.length + ")";
  fill($("peer-rows"), peers.map((p) => row([
    mono(p.peer), mono(p.addr), p.direction, p.relayed ? "relayed" : "direct",
    p.latency_ms === null ? "" : p.latency_ms.toFixed(1) + " ms",
    p.agent, p.streams, p.on_topic ? "yes" : "no",
  ])));
}

function renderServing(serving) {
  if (!serving.length) {
    fill($("serving-rows"), [row(["no models heard of yet", "", "", ""])]);
    return;
  }
  fill($("serving-rows"), serving.map((s) => row([
    s.project, s.model, mono(s.node_id + (s.local ? " (this node)" : "")),
    s.local ? "local" : seconds(s.heartbeat_age),
  ])));
}

function renderCounters(counters) {
  const requests = counters.model_requests;
  if (requests) {
    $("request-summary").textContent = requests.total + " requests: " + requests.ok + " ok, " +
      requests.failed + " failed, " + requests.in_flight + " in flight";
    fill($("request-rows"), requests.rows.map((r) => row([r.kind, r.route, r.code, mono(r.node), r.count])));
  }
  const items = [
    ["connections opened / closed", counters.connections_opened + " / " + counters.connections_closed],
    ["streams opened", counters.streams_opened],
    ["known peers", counters.known_peers],
    ["fresh heartbeats", counters.fresh_heartbeats],
  ];
  if (counters.pubsub) {
    const ps = counters.pubsub;
    items.push(["pubsub received / published / forwarded",
      ps.received + " / " + ps.published + " / " + ps.forwarded]);
    items.push(["pubsub duplicates / invalid",
      ps.duplicates + " / " + (ps.invalid_signature + ps.invalid_message)]);
  }
  const app = counters.application;
  items.push(["requests answered", app.requests_answered || 0]);
  const children = [];
  for (const [name, value] of items) {
    children.push(el("dt", name), el("dd", value));
  }
  fill($("counters"), children);
}

async function refresh() {
  const line = $("status-line");
  try {
    const response = await fetch(STATE_URL, { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const state = await response.json();
    renderNode(state.node);
    renderPeers(state.peers);
    renderServing(state.serving);
    renderCounters(state.counters);
    line.textContent = "updated " + new Date(state.now * 1000).toLocaleTimeString();
    line.className = "muted";
  } catch (error) {
    line.textContent = "cannot read the node's state: " + error.message;
    line.className = "bad";
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
