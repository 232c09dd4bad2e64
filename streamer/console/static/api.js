// Calls to /api/v1 with the signed-in user's bearer token. The token lives in sessionStorage
// (gone when the tab closes) and only ever travels in the Authorization header, never in a
// URL. A refusal becomes an ApiError carrying the API's {error, field}, so a form can show the
// message next to the field it names. A 401 on any call but sign-in means the token is gone:
// the shell is told (onSignedOut) and shows the sign-in form again.

export const API = "/api/v1";
const TOKEN_KEY = "loa.console.token";

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || "";
  }
}

export const session = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  onSignedOut: null,
  set(token) {
    this.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

export function authHeaders() {
  return session.token ? { Authorization: `Bearer ${session.token}` } : {};
}

/** JSON in, JSON out; `as: "arrayBuffer"` for a binary answer (the TTS preview). */
export async function api(method, path, body, { as = "json" } = {}) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    const err = new ApiError(res.status, (data && data.error) || `HTTP ${res.status}`,
                             data && data.field);
    if (res.status === 401 && path !== "/login" && session.onSignedOut) session.onSignedOut(err);
    throw err;
  }
  return as === "json" ? res.json() : res[as]();
}
