// The REST API under /api/v1 and the API key: the key lives in sessionStorage for this
// tab only, goes out as a Bearer header, and a refused key (401) stops the open page and
// asks for another. `session` holds who the key is and the page on show.

import { $, notice, setLive } from "./ui.js?v={{version}}";

const API = "/api/v1";
const KEY_STORE = "cao.apiKey";

export const auth = {
  get key() {
    return sessionStorage.getItem(KEY_STORE);
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
  },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (auth.key) headers.Authorization = `Bearer ${auth.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body) };
  const response = await fetch(API + path, init);
  const payload = await response.json().catch(() => null);
  if (response.ok) return payload;
  const error = payload?.error ?? {};
  if (response.status === 401) askForKey(error.message);
  throw new ApiError(response.status, error.code, error.message ?? response.statusText);
}

export const session = {
  me: null, // {role, tenant, keys_required} of the key in use
  view: null, // the open page: {stop()}
};

export function askForKey(reason) {
  session.view?.stop();
  session.view = null;
  $("view").replaceChildren();
  notice("");
  setLive("off");
  $("key-error").textContent = auth.key ? `That key was refused: ${reason || "unknown key"}` : "";
  $("key-error").hidden = !auth.key;
  auth.key = null;
  $("key-prompt").hidden = false;
  $("change-key").hidden = true;
  $("key-input").focus();
}
