// Building DOM nodes from data. Every piece of data goes in as text (textContent or an
// attribute value), never as markup: run ids, errors, results and event data are attacker-
// controlled, and the Content-Security-Policy forbids inline script as a second wall.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function replace(parent, ...children) {
  parent.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

export function ago(ts) {
  if (!ts) return "-";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${s.toFixed(0)}s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)}m ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)}h ago`;
  return `${(s / 86400).toFixed(1)}d ago`;
}

export function iso(ts) {
  return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 23) : "-";
}

export function secs(d) {
  if (d === undefined || d === null) return "-";
  if (d < 1) return `${(d * 1000).toFixed(0)} ms`;
  if (d < 120) return `${d.toFixed(2)} s`;
  return `${(d / 60).toFixed(1)} min`;
}

export function json(value) {
  if (value === undefined) return "";
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

export function badge(status) {
  return h("span", { class: `badge s-${String(status).replace(/[^a-z_-]/gi, "")}` }, status);
}

export function table(columns, rows, rowAttrs = () => ({})) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c[0])))),
    h(
      "tbody",
      {},
      rows.map((r) => h("tr", rowAttrs(r), columns.map((c) => h("td", {}, c[1](r))))),
    ),
  );
}
