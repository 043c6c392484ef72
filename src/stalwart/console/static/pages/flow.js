// Flow: every flow rule's usage against its limit, the runs waiting on it (linked to their
// pages), shared breakers, retry budgets, concurrency keys; refreshed every few seconds.
// Not read-only: the CLI's `stalwart flow resume` and `set-limit`, per rule.

import { get, post, session } from "../api.js";
import { ago, badge, h, replace, table } from "../dom.js";

const REFRESH_MS = 3000;
const SHOWN_WAITING = 50;

function num(v) {
  return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : String(v);
}

function usage(s, view) {
  if (s.kind === "SharedBreaker" || s.kind === "RetryBudget") {
    const mine = (s.kind === "SharedBreaker" ? view.breakers : view.budgets).filter((b) => b.rule === s.name);
    if (s.kind === "RetryBudget") return mine.length ? mine.map((b) => `${b.budget}: ${b.available} of ${b.allowed} retries left`).join("\n") : "not used yet";
    const open = mine.filter((b) => b.state !== "closed").length;
    return `${mine.length} breaker(s) seen, ${open} not closed (threshold ${num(s.settings.threshold ?? "?")})`;
  }
  if (s.kind === "SpendLimit") {
    const limit = s.limit.usd;
    const scopes = Object.entries(s.used);
    if (!scopes.length) return `nothing spent in ${s.period} (limit $${num(limit)})`;
    return scopes.map(([scope, usd]) => `${scope}: $${num(usd)} of $${num(limit)} (${s.period})`).join("\n");
  }
  if (s.kind === "ConcurrencyLimit") {
    const total = s.limit.total ? `, ${num(s.used.running ?? 0)} / ${num(s.limit.total)} in all` : "";
    return `${num(s.used.running ?? 0)} running (${num(s.limit.per_key)} per key${total})\n${num(s.used.waiting_keys ?? 0)} key(s) with waiting runs`;
  }
  const keys = Object.keys({ ...s.used, ...s.limit });
  if (!keys.length) return "-";
  return keys
    .map((k) => (k in s.limit ? `${k}: ${num(s.used[k] ?? 0)} / ${num(s.limit[k])}` : `${k}: ${num(s.used[k])}`))
    .join("\n");
}

function resources(s) {
  if (s.kind !== "ConcurrencyLimit") return s.resources.join(" ") || "-";
  const agents = Array.isArray(s.settings.agents) ? s.settings.agents.join(" ") : s.settings.agents;
  const key = typeof s.settings.key === "string" ? s.settings.key : "a function of the input";
  return `agents ${agents || "*"}, key: ${key}`;
}

function runLinks(ids) {
  if (!ids.length) return h("span", { class: "muted" }, "none");
  const shown = ids.slice(0, SHOWN_WAITING).map((r) =>
    h("a", { href: `#/runs/${encodeURIComponent(r)}`, class: "mono waiting-run", "data-run": r }, r),
  );
  const more = ids.length > SHOWN_WAITING ? ` … and ${ids.length - SHOWN_WAITING} more` : "";
  return h("span", { class: "runs-list" }, shown.map((a, i) => [i ? ", " : "", a]), more);
}

function ruleActions(s, say, afterAction) {
  if (session.readOnly) return null;
  let busy = false;
  const act = async (what, body) => {
    // One action at a time: a double click must not resume a held call twice.
    if (busy) return;
    busy = true;
    say(`${what} ${s.name}…`);
    try {
      const res = await post(`/api/flow/${encodeURIComponent(s.name)}/${what}`, body);
      if (what === "resume") {
        const refused = Object.keys(res.refused || {}).length;
        say(`${s.name}: resumed ${res.resumed.length} run(s)${refused ? `, ${refused} refused` : ""}`);
      } else say(`${s.name}: limit ${res.limit === null ? "cleared" : `$${res.limit}`}; woke ${res.woken}`);
      afterAction();
    } catch (err) {
      say(`${what} refused: ${err.message}`, false);
    } finally {
      busy = false;
    }
  };
  // A run waiting for a concurrency slot is not placed: only a freed slot lets it go.
  const parts = s.kind === "ConcurrencyLimit" ? [] : [
    h("button", {
      class: "resume", disabled: !s.waiting.length,
      onclick: () => confirm(`Let the ${s.waiting.length} run(s) waiting on ${s.name} go ahead once?`) && act("resume", {}),
    }, "Resume waiting"),
  ];
  if (s.kind === "SpendLimit") {
    const usd = h("input", { class: "usd", type: "number", min: "0", step: "any", size: 8, placeholder: "USD" });
    parts.push(
      h("form", {
        class: "row set-limit",
        onsubmit: (e) => {
          e.preventDefault();
          const v = Number(usd.value);
          if (usd.value.trim() === "" || !Number.isFinite(v) || v < 0) { say("give a limit in USD >= 0", false); return; }
          act("set-limit", { usd: v });
        },
      }, usd, h("button", { type: "submit" }, "Set limit"),
      h("button", { type: "button", onclick: () => act("set-limit", { clear: true }) }, "Clear")),
    );
  }
  return parts;
}

function limits(view, say, afterAction) {
  if (!view.limits.length) {
    return h("p", { class: "muted", id: "no-rules" }, "No flow rules published (a worker publishes its app's rules when it starts).");
  }
  const cols = [
    ["Rule", (s) => h("strong", {}, s.name)],
    ["Kind", (s) => s.kind],
    ["Resources", (s) => h("span", { class: "mono" }, resources(s))],
    ["Usage / limit", (s) => h("span", { class: "usage pre-line" }, usage(s, view))],
    ["Waiting runs", (s) => [h("span", { class: "count" }, `${s.waiting.length}: `), runLinks(s.waiting)]],
    ["Published", (s) => (s.app ? `${s.app}, ${ago(s.published_at)}` : ago(s.published_at))],
  ];
  if (!session.readOnly) cols.push(["Actions", (s) => ruleActions(s, say, afterAction)]);
  return table(cols, view.limits, (s) => ({ "data-rule": s.name, "data-kind": s.kind }));
}

function breakers(view) {
  if (!view.breakers.length) return h("p", { class: "muted" }, "No shared breaker has opened.");
  return table(
    [
      ["Rule", (b) => b.rule],
      ["Breaker", (b) => h("span", { class: "mono" }, b.breaker)],
      ["State", (b) => badge(b.state)],
      ["Failures", (b) => b.failures],
      ["Next probe", (b) => (b.state === "open" ? `in ${b.retry_in.toFixed(1)} s` : "-")],
      ["Probe in flight", (b) => (b.probing ? "yes" : "no")],
      ["Opened", (b) => `${b.opens}×`],
    ],
    view.breakers,
    (b) => ({ "data-breaker": `${b.rule}/${b.breaker}` }),
  );
}

function budgets(view) {
  if (!view.budgets.length) return h("p", { class: "muted" }, "No retry budget in use.");
  return table(
    [
      ["Rule", (b) => b.rule],
      ["Budget", (b) => h("span", { class: "mono" }, b.budget)],
      ["Available", (b) => `${b.available} of ${b.allowed} retries`],
      ["Used", (b) => b.retries],
      ["Successes", (b) => b.successes],
      ["Window", (b) => `${b.window} s`],
    ],
    view.budgets,
    (b) => ({ "data-budget": `${b.rule}/${b.budget}` }),
  );
}

function concurrency(view) {
  if (!view.concurrency.length) return h("p", { class: "muted" }, "No concurrency limit published.");
  return view.concurrency.map((c) => {
    const line = `${c.limit} per key${c.total ? `, ${c.total} in all` : ""} · ${c.running} running · `;
    if (!c.keys.length) {
      return h("p", { class: "cc", "data-cc": c.rule }, h("strong", {}, c.rule), ` · ${line}no key holds a slot`);
    }
    return h(
      "div",
      { class: "cc", "data-cc": c.rule },
      h("p", {}, h("strong", {}, c.rule), ` · ${line}${c.waiting_keys} key(s) with waiting runs`),
      table(
        [
          ["Key", (k) => h("span", { class: "mono" }, k.key)],
          ["Running", (k) => `${k.running} / ${c.limit}`],
          ["Waiting", (k) => k.waiting],
        ],
        c.keys,
        (k) => ({ "data-key": k.key }),
      ),
    );
  });
}

export async function render(main, params) {
  const status = h("p", { id: "action-status" });
  const body = h("div", { id: "flow" });
  const stamp = h("span", { class: "muted", id: "flow-at" });
  replace(main, h("h1", {}, "Flow control ", stamp), status, body);
  const say = (text, ok = true) => { status.textContent = text; status.className = ok ? "ok" : "error"; };
  let editing = false;
  async function refresh() {
    // Typing a limit: the next refresh must not throw the input away.
    if (editing) return;
    const view = await get("/api/flow");
    stamp.textContent = `· read ${new Date(view.at * 1000).toLocaleTimeString()}`;
    replace(
      body,
      h("section", { id: "limits" }, h("h2", {}, "Rules"), limits(view, say, () => refresh().catch(() => {}))),
      h("section", { id: "breakers" }, h("h2", {}, "Shared breakers"), breakers(view)),
      h("section", { id: "budgets" }, h("h2", {}, "Retry budgets"), budgets(view)),
      h("section", { id: "concurrency" }, h("h2", {}, "Concurrency keys"), concurrency(view)),
    );
  }
  body.addEventListener("focusin", (e) => { editing = e.target.tagName === "INPUT"; });
  body.addEventListener("focusout", () => { editing = false; });
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
