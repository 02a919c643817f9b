// Calls to the service: JSON in and out, and the bearer token when the service wants one.
//
// The token is kept in sessionStorage: it lasts as long as the tab and never leaves it
// except to this origin (the Authorization header, and ?token= for EventSource, which
// cannot send headers).

const TOKEN_KEY = "articlestream.token";

let onUnauthorized = () => {};

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage refused (e.g. a sandboxed frame): ask again next time
  }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Nothing to keep it in; the page asks again after a reload.
  }
}

// `handler(hadToken)` runs on every 401, told whether a token was sent (so it was wrong).
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

export function jobPath(id) {
  return `/api/jobs/${encodeURIComponent(id)}`;
}

export function eventsUrl(id, lastEventId) {
  const query = new URLSearchParams();
  // A fresh EventSource cannot send Last-Event-ID, so resume by query instead.
  if (lastEventId > 0) query.set("last_event_id", String(lastEventId));
  if (token()) query.set("token", token());
  const tail = query.toString();
  return `${jobPath(id)}/events${tail ? `?${tail}` : ""}`;
}

// One JSON call; `res` is null when the server could not be reached.
export async function callApi(method, path, payload) {
  const init = { method, headers: { Accept: "application/json" } };
  const sent = token();
  if (sent) init.headers.Authorization = `Bearer ${sent}`;
  if (payload !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    return { res: null, body: null };
  }
  const body = await res.json().catch(() => null);
  if (res.status === 401) onUnauthorized(Boolean(sent));
  return { res, body };
}

// The service's error object for a failed call, or one in the same shape.
export function errorOf(res, body) {
  if (!res) return { code: "network_error", message: "Could not reach the server." };
  const error = (body && body.error) || { code: `http_${res.status}`, message: res.statusText };
  const wait = res.headers.get("Retry-After");
  return wait ? { ...error, message: `${error.message} Try again in ${wait} s.` } : error;
}
