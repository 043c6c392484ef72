// A Stalwart client in Node.js that knows only NATS and the contract document.
//
// Every subject, header name, encoding and error code below is read from
// docs/contract/asyncapi.json (path in STALWART_CONTRACT); nothing of Stalwart's own code is
// used. It submits a run with a JSON body, follows its events, signals it, cancels another
// run, reads a result larger than one NATS message in pages, and asks about an unknown run.
// The last line of standard output is a JSON summary that tests/test_node_client.py checks.
//
//   NATS_URL=nats://127.0.0.1:4222 STALWART_NAMESPACE=stalwart \
//   STALWART_CONTRACT=../../docs/contract/asyncapi.json node client.mjs

import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { connect, headers as natsHeaders } from "nats";

const contract = JSON.parse(readFileSync(process.env.STALWART_CONTRACT, "utf8"));
const namespace = process.env.STALWART_NAMESPACE || "stalwart";
const BIG = Number(process.env.STALWART_BIG_BYTES || 2 * 1024 * 1024);

// -- what the contract says ----------------------------------------------------------------
const JSON_TYPE = "application/json";
const contentTypeHeader = Object.keys(
  contract.components.messages.SubmitRequest.headers.properties,
).find((h) => h.toLowerCase() === "content-type");
if (!contract.components.messages.SubmitRequest.headers.properties[contentTypeHeader].enum.includes(JSON_TYPE)) {
  throw new Error("the contract does not accept JSON bodies");
}
const errorHeader = Object.keys(contract.components.messages.ApiError.headers.properties).find(
  (h) => h !== contentTypeHeader,
);
const errorCodes = contract["x-stalwart-error-codes"];

function address(channel, params) {
  const ch = contract.channels[channel];
  if (!ch || !ch.address) throw new Error(`no channel ${channel} in the contract`);
  return ch.address.replace(/\{(\w+)\}/g, (_, name) => {
    const value = { namespace, ...params }[name];
    if (value === undefined) throw new Error(`channel ${channel} needs parameter ${name}`);
    return value;
  });
}

function newRunId() {
  return randomBytes(16).toString("hex");
}

// -- the API over request/reply ------------------------------------------------------------
class ApiError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

const nc = await connect({ servers: process.env.NATS_URL, name: "stalwart-node-contract-test" });
const enc = new TextEncoder();
const dec = new TextDecoder();

async function api(operation, body, { timeout = 30000 } = {}) {
  const h = natsHeaders();
  h.set(contentTypeHeader, JSON_TYPE);
  const reply = await nc.request(address(`api.${operation}`, {}), enc.encode(JSON.stringify(body)), {
    timeout,
    headers: h,
  });
  const data = JSON.parse(dec.decode(reply.data));
  const code = reply.headers?.get(errorHeader);
  if (code) {
    if (!errorCodes.includes(code) || data.code !== code) throw new Error(`bad error reply ${code}`);
    throw new ApiError(code, data.message);
  }
  return data;
}

// The result of an ended run, read page by page (ResultReply: data is base64 in JSON).
async function result(runId) {
  const chunks = [];
  let offset = 0;
  let size = null;
  let status = null;
  let error = null;
  while (size === null || offset < size) {
    const page = await api("result", { run_id: runId, offset, wait: 30 }, { timeout: 45000 });
    status = page.status;
    error = page.error;
    if (status !== "completed") return { status, error, pages: chunks.length };
    const chunk = Buffer.from(page.data, "base64");
    if (page.offset !== offset || (chunk.length === 0 && page.size > offset)) {
      throw new Error(`bad page at ${offset}: ${JSON.stringify({ ...page, data: undefined })}`);
    }
    chunks.push(chunk);
    offset += chunk.length;
    size = page.size;
  }
  return { status, value: JSON.parse(Buffer.concat(chunks).toString("utf8")), pages: chunks.length, size };
}

// Follows one run's events (core subscription on the events channel, any source) until a
// terminal event; calls onEvent for each.
function follow(agent, runId, onEvent) {
  const sub = nc.subscribe(address("events", { agent, run_id: runId, source: "*" }));
  const terminal = new Set(["run.completed", "run.failed", "run.cancelled"]);
  return (async () => {
    const seen = [];
    for await (const m of sub) {
      const event = JSON.parse(dec.decode(m.data));
      seen.push(event);
      await onEvent(event);
      if (terminal.has(event.type)) break;
    }
    sub.unsubscribe();
    return seen;
  })();
}

const summary = {};
const timer = setTimeout(() => {
  console.error("timed out");
  process.exit(3);
}, 150000);

// 1. Submit a run with a JSON body, follow its events, and signal it when it waits.
const runId = newRunId();
let signalled = null;
const events = follow("greet", runId, async (event) => {
  if (event.type === "wait.started" && !signalled) {
    signalled = await api("signal", { run_id: runId, name: "go", payload: { ok: true } });
  }
});
await nc.flush(); // the subscription is known to the server before the run can publish
const submitted = await api("submit", { agent: "greet", input: { name: "node" }, run_id: runId });
const seen = await events;
summary.submitted = submitted;
summary.events = seen.map((e) => e.type);
summary.event_agents = [...new Set(seen.map((e) => e.agent).filter(Boolean))];
summary.signal = signalled;
summary.status = (await api("status", { run_id: runId })).status;
summary.result = await result(runId);

// 2. Cancel another run while it waits.
const waiter = await api("submit", { agent: "waiter", input: null });
summary.cancel = await api("cancel", { run_id: waiter.run_id, reason: "not needed" });
summary.cancelled = await result(waiter.run_id);

// 3. A result larger than the server's max_payload, read in pages.
const big = await api("submit", { agent: "big", input: BIG });
const bigResult = await result(big.run_id);
summary.big = {
  status: bigResult.status,
  pages: bigResult.pages,
  size: bigResult.size,
  blob_length: bigResult.value.blob.length,
  all_x: /^x*$/.test(bigResult.value.blob),
  max_payload: nc.info.max_payload,
};

// 4. Errors are structured.
try {
  await api("status", { run_id: newRunId() });
  summary.unknown = "no error";
} catch (err) {
  summary.unknown = err.code;
}
try {
  await api("submit", { agent: "no-such-agent" });
  summary.unknown_agent = "no error";
} catch (err) {
  summary.unknown_agent = err.code;
}

clearTimeout(timer);
await nc.drain();
console.log(JSON.stringify(summary));
