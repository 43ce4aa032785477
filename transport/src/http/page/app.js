// The Gavel browser page: live auctions from the node's WebSocket stream (gavel.v1.json).
//
// One socket to wss://<this host>/v1/ws subscribes to every auction (pattern ">", or the
// page's ?pattern=…), paced to one update per auction per ?interval_ms= (250 by default).
// The node sends a snapshot of each matching auction, then conflated price updates, closes
// and settlements. After a drop the page reconnects (full-jitter backoff) and subscribes
// again with the (epoch, seq) it last saw of each auction, so only what moved is sent.
// No framework and no build step: the DOM is built with createElement and textContent only.
"use strict";

(() => {
  const SUBPROTOCOL = "gavel.v1.json";
  const POINTS_MAX = 120; // chart points kept per auction
  const RESUME_MAX = 500; // positions per subscribe (≈ 60 bytes each; messages ≤ 64 KiB)
  const BACKOFF_MS_MIN = 250;
  const BACKOFF_MS_MAX = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const CHART_W = 180;
  const CHART_H = 36;

  const params = new URLSearchParams(location.search);
  const pattern = params.get("pattern") || ">";
  const intervalMs = Number.parseInt(params.get("interval_ms") || "250", 10) || 0;

  /** id (string) -> auction state */
  const auctions = new Map();
  let socket = null;
  let attempts = 0;
  let clockOffsetMs = 0; // node clock minus ours
  let nextRequest = 1;

  const $ = (id) => document.getElementById(id);

  function setStatus(kind, text) {
    const el = $("status");
    el.className = "status " + kind;
    el.textContent = text;
  }

  function kindOf(rules) {
    if (rules.english) return "english";
    if (rules.sealedFirstPrice) return "sealed 1st";
    if (rules.sealedSecondPrice) return "sealed 2nd";
    if (rules.dutch) return "dutch";
    return "?";
  }

  function send(body) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(Object.assign({ requestId: String(nextRequest++) }, body)));
    }
  }

  function connect() {
    setStatus("connecting", attempts ? "reconnecting…" : "connecting…");
    const ws = new WebSocket(`wss://${location.host}/v1/ws`, SUBPROTOCOL);
    socket = ws;
    ws.onopen = () => {
      attempts = 0;
      setStatus("live", "live");
      send({ ping: { clientSentAtUs: String(Date.now() * 1000) } });
      // Positions of what the page shows, so only what moved is sent again; beyond
      // RESUME_MAX (the node's message size limit) a fresh set of snapshots is cheaper.
      const resume = [];
      if (auctions.size <= RESUME_MAX) {
        for (const a of auctions.values()) {
          resume.push({ auctionId: a.id, epoch: a.epoch, seq: a.seq });
        }
      }
      send({ subscribe: { patterns: [pattern], intervalMs, resume } });
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        console.warn("undecodable message", e);
        return;
      }
      handle(message);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      attempts += 1;
      const cap = Math.min(BACKOFF_MS_MAX, BACKOFF_MS_MIN * 2 ** Math.min(attempts, 8));
      const wait = BACKOFF_MS_MIN + Math.random() * cap;
      setStatus("down", `disconnected; retrying in ${(wait / 1000).toFixed(1)} s`);
      setTimeout(connect, wait);
    };
  }

  function handle(m) {
    if (m.auctionSnapshot) return snapshot(m.auctionSnapshot);
    if (m.priceUpdate) return update(m.priceUpdate);
    if (m.auctionClosed) return closed(m.auctionClosed);
    if (m.auctionSettled) return settled(m.auctionSettled);
    if (m.snapshotRequired) {
      // The node lost the stream's history: forget the auction; its snapshot follows.
      const a = auctions.get(m.snapshotRequired.auctionId);
      if (a) a.seq = "0";
      return;
    }
    if (m.pong) {
      const sent = Number(m.pong.clientSentAtUs) / 1000;
      const node = Number(m.pong.serverSentAtUs) / 1000;
      clockOffsetMs = node - (sent + Date.now()) / 2;
      return;
    }
    if (m.error) {
      console.warn("node error", m.error.code, m.error.message);
      setStatus("down", m.error.code.replace("ERROR_CODE_", "").toLowerCase().replace(/_/g, " "));
    }
  }

  const newer = (a, seq) => BigInt(seq || "0") > BigInt(a.seq || "0");

  function snapshot(s) {
    const id = s.rules.auctionId;
    let a = auctions.get(id);
    if (!a) {
      a = { id, points: [], row: null };
      auctions.set(id, a);
    } else if (!newer(a, s.seq) && a.epoch === s.epoch) {
      return;
    }
    Object.assign(a, {
      topic: s.rules.topic,
      kind: kindOf(s.rules),
      epoch: s.epoch,
      seq: s.seq || "0",
      phase: s.phase,
      price: s.price ?? null,
      leader: s.leader ?? null,
      endsAtMs: Number(s.endsAtUs || 0) / 1000,
      startsAtMs: Number(s.rules.startsAtUs || 0) / 1000,
      bids: s.bidsAccepted || "0",
      watchers: s.watchers ?? a.watchers ?? null,
    });
    if (s.settlement && s.settlement.winner) {
      a.price = s.settlement.winner.price;
      a.leader = s.settlement.winner.bidderId;
    }
    addPoint(a);
    render(a);
  }

  function update(u) {
    const a = auctions.get(u.auctionId);
    if (!a || !newer(a, u.seq)) return; // never go back to an older state
    Object.assign(a, {
      epoch: u.epoch,
      seq: u.seq,
      price: u.price ?? null,
      leader: u.leader ?? null,
      endsAtMs: Number(u.endsAtUs || 0) / 1000,
      bids: u.bidsAccepted || "0",
    });
    if (u.watchers !== undefined) a.watchers = u.watchers;
    addPoint(a);
    render(a, true);
  }

  function closed(c) {
    const a = auctions.get(c.auctionId);
    if (!a) return;
    a.phase = "PHASE_SETTLED";
    if (newer(a, c.seq)) a.seq = c.seq;
    render(a);
  }

  function settled(s) {
    const a = auctions.get(s.auctionId);
    if (!a) return;
    a.phase = "PHASE_SETTLED";
    if (newer(a, s.seq)) a.seq = s.seq;
    if (s.winner) {
      a.price = s.winner.price;
      a.leader = s.winner.bidderId;
      addPoint(a);
    } else {
      a.leader = null;
    }
    a.noWinner = !s.winner;
    render(a);
  }

  function addPoint(a) {
    if (a.price === null || a.price === undefined) return;
    const value = Number(a.price);
    const last = a.points[a.points.length - 1];
    if (last && last[1] === value) return;
    a.points.push([Date.now(), value]);
    if (a.points.length > POINTS_MAX) a.points.shift();
  }

  function cell(row, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function createRow(a) {
    const tr = document.createElement("tr");
    tr.dataset.auction = a.id;
    const cells = {
      id: cell(tr, "id"),
      topic: cell(tr, "topic"),
      kind: cell(tr, "kind"),
      price: cell(tr, "price num"),
      leader: cell(tr, "leader"),
      bids: cell(tr, "bids num"),
      left: cell(tr, "left num"),
      watchers: cell(tr, "watchers num"),
      chart: cell(tr, "chart-cell"),
    };
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("width", CHART_W);
    svg.setAttribute("height", CHART_H);
    svg.setAttribute("viewBox", `0 0 ${CHART_W} ${CHART_H}`);
    svg.setAttribute("role", "img");
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("class", "area");
    const line = document.createElementNS(SVG, "polyline");
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("class", "dot");
    svg.append(area, line, dot);
    cells.chart.appendChild(svg);
    Object.assign(cells, { svg, area, line, dot });
    // Keep rows in auction id order.
    const rows = $("rows");
    const before = [...rows.children].find((r) => BigInt(r.dataset.auction) > BigInt(a.id));
    rows.insertBefore(tr, before || null);
    a.row = tr;
    a.cells = cells;
    $("auctions").hidden = false;
    $("empty").hidden = true;
  }

  function render(a, changed) {
    if (!a.row) createRow(a);
    const c = a.cells;
    c.id.textContent = a.id;
    c.topic.textContent = a.topic;
    c.kind.textContent = a.kind;
    c.price.textContent = a.price ?? (a.kind.startsWith("sealed") ? "sealed" : "—");
    c.leader.textContent = a.leader ?? (a.noWinner ? "no winner" : "—");
    c.bids.textContent = a.bids;
    c.watchers.textContent = a.watchers ?? "—";
    a.row.classList.toggle("closed", a.phase === "PHASE_SETTLED");
    if (changed) {
      c.price.classList.add("flash");
      setTimeout(() => c.price.classList.remove("flash"), 600);
    }
    drawChart(a);
    tickOne(a, Date.now() + clockOffsetMs);
  }

  function drawChart(a) {
    const c = a.cells;
    const pts = a.points;
    c.svg.setAttribute("aria-label", `price history of auction ${a.id}: ${pts.length} points`);
    c.svg.dataset.points = String(pts.length);
    if (pts.length === 0) {
      c.line.setAttribute("points", "");
      c.area.setAttribute("points", "");
      c.dot.setAttribute("r", "0");
      return;
    }
    c.dot.setAttribute("r", "2.5");
    // The time axis runs to now (the last price holds until the next change), at least a
    // few seconds wide so a fresh auction's first steps do not fill it.
    const now = Date.now();
    const t0 = Math.min(pts[0][0], now - 5000);
    const t1 = Math.max(now, pts[pts.length - 1][0] + 1);
    let lo = Math.min(...pts.map((p) => p[1]));
    let hi = Math.max(...pts.map((p) => p[1]));
    if (hi === lo) { hi += 1; lo -= 1; }
    const pad = 3;
    const x = (t) => pad + ((t - t0) / (t1 - t0)) * (CHART_W - 2 * pad);
    const y = (v) => CHART_H - pad - ((v - lo) / (hi - lo)) * (CHART_H - 2 * pad);
    // A step line: a price holds until the next one.
    const coords = [];
    pts.forEach(([t, v], i) => {
      if (i > 0) coords.push(`${x(t).toFixed(1)},${y(pts[i - 1][1]).toFixed(1)}`);
      coords.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    });
    const lastY = y(pts[pts.length - 1][1]).toFixed(1);
    const lastX = x(t1).toFixed(1);
    coords.push(`${lastX},${lastY}`);
    c.line.setAttribute("points", coords.join(" "));
    c.area.setAttribute(
      "points",
      `${x(pts[0][0]).toFixed(1)},${CHART_H - pad} ${coords.join(" ")} ${lastX},${CHART_H - pad}`,
    );
    c.dot.setAttribute("cx", lastX);
    c.dot.setAttribute("cy", lastY);
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400);
    const hh = String(Math.floor((s % 86400) / 3600)).padStart(2, "0");
    const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
    const ss = String(s % 60).padStart(2, "0");
    return (d ? `${d}d ` : "") + `${hh}:${mm}:${ss}`;
  }

  function tickOne(a, now) {
    let text;
    if (a.phase === "PHASE_SETTLED") text = "closed";
    else if (a.startsAtMs > now) text = "starts in " + duration(a.startsAtMs - now);
    else if (a.endsAtMs > now) text = duration(a.endsAtMs - now);
    else text = "closing…";
    if (a.cells.left.textContent !== text) a.cells.left.textContent = text;
  }

  let ticks = 0;
  setInterval(() => {
    const now = Date.now() + clockOffsetMs;
    const redraw = ++ticks % 4 === 0; // charts once a second: their time axis ends at now
    for (const a of auctions.values()) {
      if (!a.row) continue;
      tickOne(a, now);
      if (redraw && a.phase !== "PHASE_SETTLED") drawChart(a);
    }
  }, 250);

  // For operators and tests: look at the page's state, or drop the socket as a network
  // failure would (the page then reconnects and resumes).
  window.gavel = Object.freeze({
    auctions: () => [...auctions.values()].map(({ row, cells, ...a }) => a),
    connected: () => socket !== null && socket.readyState === WebSocket.OPEN,
    drop: () => { if (socket) socket.close(); },
  });

  connect();
})();
