// Workers: heartbeat age, capacity / active / free, circuit breakers, version.

import { get } from "../api.js";
import { ago, h, replace, table } from "../dom.js";

const REFRESH_MS = 3000;

function breakers(w) {
  const b = w.breakers || {};
  const open = Object.entries(b).filter(([, state]) => state && state !== "closed");
  if (!open.length) return "all closed";
  return open.map(([name, state]) => `${name}: ${typeof state === "string" ? state : JSON.stringify(state)}`).join(", ");
}

export async function render(main, params) {
  const body = h("div", { id: "workers" });
  replace(main, h("h1", {}, "Workers"), body);
  async function refresh() {
    const list = await get("/api/workers");
    if (!list.length) {
      replace(body, h("p", { class: "muted" }, "No worker is sending heartbeats."));
      return;
    }
    replace(
      body,
      table(
        [
          ["Worker", (w) => h("span", { class: "nowrap" }, w.worker_id)],
          ["Host", (w) => (w.host ? `${w.host}:${w.pid}` : "-")],
          ["Heartbeat", (w) => (w.heartbeat_age !== undefined ? `${w.heartbeat_age.toFixed(1)} s ago` : ago(w.at))],
          ["Capacity", (w) => w.capacity],
          ["Active", (w) => w.active],
          ["Free", (w) => w.free],
          ["Agents", (w) => (w.agents || []).join(", ")],
          ["Breakers", breakers],
          ["Lanes", (w) => (w.lanes && w.lanes.length ? w.lanes.join(", ") : "default")],
          ["State", (w) => (w.draining ? "draining" : "serving")],
          ["Version", (w) => [w.version, w.build].filter(Boolean).join(" ") || "-"],
        ],
        list,
        (w) => ({ "data-worker": w.worker_id }),
      ),
    );
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
