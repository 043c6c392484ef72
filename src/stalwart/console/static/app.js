// The console's router: URL-addressable pages in the hash (#/runs?status=failed,
// #/runs/<id>, #/workers, #/agents, #/flow), a log-in form when the API asks for the token.

import { ApiError, loadSession, login, session } from "./api.js";
import { h, replace } from "./dom.js";
import * as agents from "./pages/agents.js";
import * as flow from "./pages/flow.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";
import * as workers from "./pages/workers.js";

const main = document.getElementById("main");
let cleanup = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query) };
}

function showLogin(message) {
  const input = h("input", { type: "password", id: "token", autocomplete: "current-password" });
  const note = h("p", { class: "error", id: "login-error" }, message || "");
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await login(input.value);
          await start();
        } catch (err) {
          note.textContent = err.message;
        }
      },
    },
    h("h1", {}, "Stalwart console"),
    h("label", { for: "token" }, "Access token"),
    input,
    h("button", { type: "submit" }, "Log in"),
    note,
  );
  replace(main, form);
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const { parts, params } = parseHash();
  const page = parts[0] || "runs";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  try {
    if (page === "runs" && parts[1]) cleanup = await run.render(main, parts[1], params);
    else if (page === "workers") cleanup = await workers.render(main, params);
    else if (page === "agents") cleanup = await agents.render(main, params);
    else if (page === "flow") cleanup = await flow.render(main, params);
    else cleanup = await runs.render(main, params);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showLogin();
    else replace(main, h("p", { class: "error" }, `Error: ${err.message}`));
  }
}

async function start() {
  // A login URL printed by `stalwart console` carries the token in the fragment, which
  // the browser never sends anywhere: trade it for the session cookie, then drop it.
  const m = location.hash.match(/^#token=(.+)$/);
  if (m) {
    history.replaceState(null, "", "#/runs");
    try {
      await login(decodeURIComponent(m[1]));
    } catch (err) {
      showLogin(err.message);
      return;
    }
  }
  try {
    await loadSession();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showLogin();
      return;
    }
    replace(main, h("p", { class: "error" }, `Error: ${err.message}`));
    return;
  }
  document.getElementById("mode").textContent =
    `${session.namespace} · v${session.version}${session.readOnly ? " · read-only" : ""}`;
  document.body.classList.toggle("read-only", session.readOnly);
  await route();
}

window.addEventListener("hashchange", route);
start();
