// One run: its record, timeline of steps, epochs (owner per epoch, failovers and their
// gaps), waits and signals, pending approvals, result, the live event stream, and actions.

import { get, post, session } from "../api.js";
import { ago, badge, h, iso, json, replace, secs, table } from "../dom.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const FLOW_SIGNAL = "flow.resume";
// After one of these, the run is no longer held by the flow event before it.
const FLOW_CLEARS = new Set(["flow.resumed", "step.completed", "step.failed", "run.started", "run.resumed",
  "run.completed", "run.failed", "run.cancelled"]);

// What a flow.waiting / concurrency.waiting event says, as one line of text.
function flowLine(ev) {
  const d = ev.data || {};
  if (ev.type === "concurrency.waiting") {
    return `Waiting for a slot of concurrency limit ${d.rule} (key ${d.key}, ${d.limit} at once, ${d.ahead || 0} ahead)`;
  }
  const until = d.until ? ` until ${iso(d.until)}` : "";
  const how = d.passivate ? "passivated" : "waiting in place";
  return `Held by flow rule ${d.rule} on ${d.resource || "?"}${d.limit ? ` (${d.limit})` : ""}${until}, ${how}`;
}

function section(title, id, ...content) {
  return h("section", { id }, h("h2", {}, title), ...content);
}

function summary(d) {
  const r = d.run;
  const rows = [
    ["Status", badge(r.status)],
    ["Agent", r.agent + (r.lane ? ` (lane ${r.lane})` : "")],
    ["Owner now", r.owner || `- (${r.placement})`],
    ["Epoch", r.epoch_text],
    ["Created", `${iso(r.created_at)} (${ago(r.created_at)})`],
    ["Ended", r.ended_at ? iso(r.ended_at) : "-"],
    ["Duration", secs(r.duration)],
    ["Tokens", `${d.input_tokens} in / ${d.output_tokens} out`],
    ["Cost", d.cost_usd ? `$${d.cost_usd.toFixed(4)}` : "-"],
    ["Retries", d.retries],
  ];
  if (d.waiting_for) {
    const flow = d.waiting_for === FLOW_SIGNAL;
    rows.push(["Waiting for", flow ? [d.waiting_for, " (flow control: ", h("a", { href: "#/flow" }, "Flow"), ")"] : d.waiting_for]);
  }
  if (d.wait_signal || d.wait_deadline) {
    const what = d.wait_signal ? `signal ${d.wait_signal}` : "sleep";
    const left = d.wait_deadline - Date.now() / 1000;
    const when = left > 0 ? `in ${secs(left)}` : "passed";
    const until = d.wait_deadline ? ` until ${iso(d.wait_deadline)} (${when})` : " (no deadline)";
    rows.push(["Wait", h("span", { id: "wait-deadline" }, what + until)]);
  }
  if (d.conversation) {
    const c = d.conversation;
    const held = c.holder ? (c.holder === r.run_id ? "held by this run" : `held by ${c.holder}`) : "free";
    const queue = c.queue.length ? `, ${c.queue.length} queued: ${c.queue.join(", ")}` : "";
    rows.push(["Conversation", h("span", { id: "conversation" }, `${c.id}: ${c.turns} turns, ${c.items} items, ${held}${queue}`)]);
  }
  if (d.queued_for) rows.push(["Queued for", [h("span", { id: "queued-for" }, d.queued_for), " (", h("a", { href: "#/flow" }, "Flow"), ")"]]);
  if (d.cancel_requested) rows.push(["Cancel requested", d.cancel_requested]);
  const record = h("dl", { class: "record" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  if (!d.error) return record;
  return [record, h("pre", { class: "error-text", id: "run-error" }, (r.error_type ? r.error_type + ": " : "") + d.error)];
}

function steps(d) {
  if (!d.steps.length) return h("p", { class: "muted" }, "No step journaled yet.");
  return table(
    [
      ["#", (s) => s.seq],
      ["Step", (s) => h("span", { class: "mono" }, s.key)],
      ["Outcome", (s) => badge(s.outcome)],
      ["Started", (s) => iso(s.started_at)],
      ["Duration", (s) => secs(s.duration)],
      ["Attempts", (s) => s.attempts],
      ["Worker", (s) => s.worker],
      ["Tokens", (s) => (s.input_tokens || s.output_tokens ? `${s.input_tokens}/${s.output_tokens}` : "")],
      ["Cost", (s) => (s.cost_usd ? `$${s.cost_usd.toFixed(4)}` : "")],
      ["Error", (s) => h("span", { class: "error-text" }, [s.error, ...(s.errors || []).map((e) => json(e))].filter(Boolean).join("\n"))],
    ],
    d.steps,
    (s) => ({ "data-step": s.key, class: s.epoch !== d.run.epoch ? "old-epoch" : "" }),
  );
}

function epochs(d) {
  return h(
    "ol",
    { class: "epochs" },
    d.epochs.map((e) =>
      h(
        "li",
        { class: `epoch cause-${e.cause}`, "data-epoch": e.epoch_text, "data-worker": e.worker, "data-cause": e.cause },
        h("strong", {}, `epoch ${e.epoch_text}`),
        ` on ${e.worker} from ${iso(e.started_at)} `,
        h("span", { class: "cause" }, e.cause),
        e.cause === "failover" || e.cause === "handover"
          ? h("span", { class: "gap" }, ` after ${e.previous_worker || "?"} was lost: ${secs(e.gap)} without an owner`)
          : null,
      ),
    ),
  );
}

function waitsAndSignals(d) {
  const parts = [];
  if (d.waits.length)
    parts.push(
      table(
        [
          ["Wait", (w) => w.key],
          ["For", (w) => w.signal || "timer"],
          ["Since", (w) => iso(w.started_at)],
          ["Deadline", (w) => (w.deadline ? iso(w.deadline) : "never")],
          ["Resolved", (w) => (w.resolved_at ? iso(w.resolved_at) : "waiting")],
        ],
        d.waits,
      ),
    );
  if (d.signals.length)
    parts.push(
      table(
        [
          ["Signal", (s) => s.name],
          ["Sent", (s) => iso(s.sent_at)],
          ["Bytes", (s) => s.payload_bytes],
        ],
        d.signals,
      ),
    );
  return parts.length ? parts : [h("p", { class: "muted" }, "No waits and no pending signals.")];
}

function actions(d, runId, status, afterAction) {
  if (session.readOnly) return null;
  const say = (text, ok = true) => { status.textContent = text; status.className = ok ? "ok" : "error"; };
  let busy = false;
  const act = async (what, body, then) => {
    // One action at a time: a double click must not retry or fork a run twice.
    if (busy) return;
    busy = true;
    say(`${what}…`);
    try {
      const res = await post(`/api/runs/${encodeURIComponent(runId)}/${what}`, body);
      say(`${what}: ${res.outcome || res.run_id}`);
      if (then) then(res);
      afterAction();
    } catch (err) {
      say(`${what} refused: ${err.message}`, false);
    } finally {
      busy = false;
    }
  };
  const ended = TERMINAL.has(d.run.status);
  const signalName = h("input", { id: "signal-name", placeholder: "signal name", size: 12 });
  const signalPayload = h("input", { id: "signal-payload", placeholder: "payload JSON", size: 24 });
  const forkAt = h("select", { id: "fork-at" }, d.steps.map((s) => h("option", { value: s.key }, s.key)));
  const goto = (res) => { location.hash = `#/runs/${encodeURIComponent(res.run_id)}`; };
  const approvals = d.approvals.map((a) =>
    h(
      "div",
      { class: "approval", "data-call": a.call_id },
      `${a.tool} (call ${a.call_id}) asks: `,
      h("code", {}, json(a.arguments)),
      h("button", { onclick: () => act("approve", { call_id: a.call_id, approve: true, tool: a.tool, args_hash: a.args_hash }) }, "Approve"),
      h("button", { onclick: () => act("approve", { call_id: a.call_id, approve: false, tool: a.tool, args_hash: a.args_hash }) }, "Reject"),
    ),
  );
  return section(
    "Actions",
    "actions",
    approvals,
    h(
      "div",
      { class: "row" },
      h("button", { id: "cancel", disabled: ended, onclick: () => confirm(`Cancel run ${runId}?`) && act("cancel", { reason: "cancelled from the console" }) }, "Cancel run"),
      h("button", { id: "retry", disabled: !ended || d.run.status === "completed", onclick: () => act("retry", {}, goto) }, "Retry as a new run"),
    ),
    h(
      "form",
      {
        class: "row",
        onsubmit: (e) => {
          e.preventDefault();
          let payload = null;
          try {
            payload = signalPayload.value.trim() ? JSON.parse(signalPayload.value) : null;
          } catch (err) {
            say(`payload is not JSON: ${err.message}`, false);
            return;
          }
          act("signal", { name: signalName.value.trim(), payload });
        },
      },
      signalName, signalPayload, h("button", { type: "submit", id: "send-signal", disabled: ended }, "Send signal"),
    ),
    d.steps.length
      ? h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); act("fork", { at: forkAt.value }, goto); } },
          "Fork from step ", forkAt, h("button", { type: "submit", id: "fork" }, "Fork"))
      : null,
  );
}

function result(d) {
  if (d.result_note) return h("p", { class: "muted" }, d.result_note);
  if (d.run.status !== "completed") return h("p", { class: "muted" }, "No result yet.");
  return h("pre", { id: "result" }, json(d.result));
}

export async function render(main, runId, params) {
  const head = h("h1", {}, "Run ", h("span", { class: "mono", id: "run-id" }, runId));
  const body = h("div", { id: "run" });
  const status = h("p", { id: "action-status" });
  const eventList = h("ol", { id: "events", class: "events" });
  const flowNote = h("p", { id: "flow-note", class: "flow-note", hidden: true });
  replace(main, h("p", {}, h("a", { href: "#/runs" }, "‹ Runs")), head, status, flowNote, body,
    section("Events", "event-section", eventList));
  let source = null;
  let pending = null;
  let ended = false;
  const seen = new Set();

  async function refresh() {
    const d = await get(`/api/runs/${encodeURIComponent(runId)}`);
    replace(
      body,
      summary(d),
      section("Epochs", "epoch-section", epochs(d)),
      actions(d, runId, status, () => soon()),
      section("Timeline", "timeline", steps(d)),
      section("Waits and signals", "waits", waitsAndSignals(d)),
      section("Result", "result-section", result(d)),
    );
    ended = TERMINAL.has(d.run.status);
    return d;
  }
  function soon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh().catch(() => {}); }, 250);
  }

  await refresh();
  source = new EventSource(`/api/runs/${encodeURIComponent(runId)}/events`);
  source.onmessage = (msg) => {
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      return;
    }
    // A reconnecting EventSource reads the run's events from the start again.
    if (ev.seq) {
      if (seen.has(ev.seq)) return;
      seen.add(ev.seq);
    }
    if (ev.type === "flow.waiting" || ev.type === "concurrency.waiting") {
      replace(flowNote, flowLine(ev), " · ", h("a", { href: "#/flow" }, "Flow page"));
      flowNote.hidden = false;
    } else if (FLOW_CLEARS.has(ev.type)) flowNote.hidden = true;
    eventList.append(
      h("li", { "data-type": ev.type }, h("span", { class: "mono" }, iso(ev.at)), " ", h("strong", {}, ev.type),
        ev.step ? ` ${ev.step}` : "", ev.worker ? ` @${ev.worker}` : "", ev.data ? h("code", {}, " " + json(ev.data)) : ""),
    );
    soon();
  };
  source.addEventListener("end", () => { source.close(); soon(); });
  source.addEventListener("failure", (msg) => {
    eventList.append(h("li", { class: "error-text" }, `event stream failed: ${msg.data}`));
    source.close();
  });
  // A run that ends while the stream is down still shows its end: poll until it ends.
  const timer = setInterval(() => { if (!ended) refresh().catch(() => {}); }, 2000);
  return () => {
    if (source) source.close();
    clearInterval(timer);
    if (pending) clearTimeout(pending);
  };
}
