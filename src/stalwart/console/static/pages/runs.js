// Runs: filters (status, agent, time range, id search) kept in the URL, paging by cursor,
// live updates (the all-runs event stream when there is one, else polling).

import { get } from "../api.js";
import { ago, badge, h, iso, replace, secs, table } from "../dom.js";

const STATUSES = ["accepted", "running", "waiting", "completed", "failed", "cancelled"];
const RANGES = { "": "any time", 900: "last 15 min", 3600: "last hour", 86400: "last day", 604800: "last week" };
const POLL_MS = 3000;

function filtersForm(params) {
  const chosen = new Set((params.get("status") || "").split(",").filter(Boolean));
  const boxes = STATUSES.map((s) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "status", value: s, checked: chosen.has(s) }), s),
  );
  const range = h(
    "select",
    { name: "range", id: "f-range" },
    Object.entries(RANGES).map(([v, text]) => h("option", { value: v, selected: (params.get("range") || "") === v }, text)),
  );
  const form = h(
    "form",
    {
      class: "filters",
      id: "filters",
      onsubmit: (e) => {
        e.preventDefault();
        const data = new FormData(form);
        const q = new URLSearchParams();
        const statuses = data.getAll("status");
        if (statuses.length) q.set("status", statuses.join(","));
        for (const key of ["agent", "search", "range", "from", "to"]) {
          const v = String(data.get(key) || "").trim();
          if (v) q.set(key, v);
        }
        location.hash = `#/runs${q.toString() ? "?" + q : ""}`;
      },
    },
    h("fieldset", {}, h("legend", {}, "Status"), boxes),
    h("label", {}, "Agent ", h("input", { name: "agent", id: "f-agent", value: params.get("agent") || "", size: 14 })),
    h("label", {}, "Run id ", h("input", { name: "search", id: "f-search", value: params.get("search") || "", size: 24, placeholder: "prefix or part" })),
    h("label", {}, "Created ", range),
    h("label", {}, "from ", h("input", { type: "datetime-local", name: "from", id: "f-from", value: params.get("from") || "" })),
    h("label", {}, "to ", h("input", { type: "datetime-local", name: "to", id: "f-to", value: params.get("to") || "" })),
    h("button", { type: "submit", id: "f-apply" }, "Apply"),
  );
  return form;
}

// A datetime-local value (local time) as epoch seconds, or undefined.
function epoch(text) {
  const ms = text ? new Date(text).getTime() : NaN;
  return Number.isFinite(ms) ? String(ms / 1000) : undefined;
}

function query(params, cursor) {
  const range = Number(params.get("range") || 0);
  return {
    status: params.get("status") || undefined,
    agent: params.get("agent") || undefined,
    search: params.get("search") || undefined,
    since: epoch(params.get("from")) || (range ? String(Date.now() / 1000 - range) : undefined),
    until: epoch(params.get("to")),
    limit: params.get("limit") || 25,
    cursor: cursor || undefined,
  };
}

export async function render(main, params) {
  const body = h("div", { id: "runs" });
  const pager = h("div", { class: "pager" });
  const live = h("span", { class: "muted", id: "live" }, "");
  replace(main, h("h1", {}, "Runs ", live), filtersForm(params), body, pager);
  const cursors = [""]; // cursor of each page seen, for "Newer"
  let page = 0;

  async function refresh() {
    const result = await get("/api/runs", query(params, cursors[page]));
    const runs = result.runs || [];
    replace(
      body,
      runs.length
        ? table(
            [
              ["Run", (r) => h("a", { href: `#/runs/${encodeURIComponent(r.run_id)}`, class: "mono" }, r.run_id)],
              ["Agent", (r) => r.agent + (r.lane ? ` (${r.lane})` : "") + (r.conversation ? ` · conversation ${r.conversation}` : "")],
              ["Status", (r) => badge(r.status)],
              ["Owner", (r) => r.owner || (r.placement === "ended" ? "-" : `- (${r.placement})`)],
              ["Epoch", (r) => r.epoch_text || r.epoch],
              ["Entries", (r) => r.journal_entries],
              ["Created", (r) => h("span", { title: iso(r.created_at) }, ago(r.created_at))],
              ["Duration", (r) => secs(r.duration)],
              ["Error", (r) => h("span", { class: "error-text" }, r.error || "")],
            ],
            runs,
            (r) => ({ "data-run": r.run_id, "data-status": r.status }),
          )
        : h("p", { class: "muted", id: "no-runs" }, "No run matches."),
    );
    replace(
      pager,
      h("button", { id: "newer", disabled: page === 0, onclick: () => { page -= 1; refresh(); } }, "‹ Newer"),
      h("span", { class: "muted" }, ` page ${page + 1} · scanned ${result.scanned ?? "?"} `),
      h(
        "button",
        {
          id: "older",
          disabled: !result.next_cursor,
          onclick: () => {
            cursors[page + 1] = result.next_cursor;
            page += 1;
            refresh();
          },
        },
        "Older ›",
      ),
    );
  }

  await refresh();
  // Live: refresh the first page when any run's event arrives (debounced), else poll.
  let timer = null;
  let pending = null;
  const soon = () => {
    if (pending || page !== 0) return;
    pending = setTimeout(() => { pending = null; refresh().catch(() => {}); }, 300);
  };
  const poll = () => {
    if (!timer) timer = setInterval(() => page === 0 && refresh().catch(() => {}), POLL_MS);
    live.textContent = "· live (polling)";
  };
  const source = new EventSource("/api/events" + (params.get("agent") ? `?agent=${encodeURIComponent(params.get("agent"))}` : ""));
  source.onopen = () => { live.textContent = "· live"; };
  source.onmessage = soon;
  source.onerror = () => { source.close(); poll(); };
  return () => {
    source.close();
    if (timer) clearInterval(timer);
    if (pending) clearTimeout(pending);
  };
}
