// The console's API: JSON over fetch, the session (CSRF token, read-only) and log-in.

export const session = { csrf: "", readOnly: true, version: "", namespace: "" };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function answer(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText);
  return body;
}

export async function get(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  return answer(await fetch(url, { credentials: "same-origin" }));
}

export async function post(path, body = {}) {
  return answer(
    await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-stalwart-csrf": session.csrf },
      body: JSON.stringify(body),
    }),
  );
}

export async function loadSession() {
  const s = await get("/api/session");
  session.csrf = s.csrf;
  session.readOnly = s.read_only;
  session.version = s.version;
  session.namespace = s.namespace;
  return s;
}

export async function login(token) {
  return answer(
    await fetch("/api/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token }),
    }),
  );
}
