// Agents: queue depth per agent and lane, consumers, workers, runs in flight, throughput.

import { get } from "../api.js";
import { h, replace, table } from "../dom.js";

const REFRESH_MS = 3000;

export async function render(main, params) {
  const body = h("div", { id: "agents" });
  replace(main, h("h1", {}, "Agents"), body);
  async function refresh() {
    const list = await get("/api/agents");
    if (!list.length) {
      replace(body, h("p", { class: "muted" }, "No agent is registered yet."));
      return;
    }
    replace(
      body,
      table(
        [
          ["Agent", (a) => a.agent],
          ["Lane", (a) => a.lane || "default"],
          ["Pending", (a) => a.pending],
          ["Consumer", (a) => h("span", { class: "mono" }, a.consumer || "-")],
          ["Waiting pulls", (a) => a.waiting_pulls],
          ["Workers", (a) => (Array.isArray(a.workers) ? a.workers.length : a.workers)],
          ["In flight", (a) => Object.entries(a.in_flight || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "0"],
          ["Done / failed", (a) => `${a.completed} / ${a.failed} in ${Math.round(a.window / 60)} min`],
          ["Throughput", (a) => (a.throughput !== undefined && a.throughput !== null ? `${Number(a.throughput).toFixed(2)} runs/min` : "-")],
        ],
        list,
        (a) => ({ "data-agent": a.agent }),
      ),
    );
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
