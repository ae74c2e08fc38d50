// Shared rendering helpers of the dashboard's pages: building elements, formatting
// times and durations, the notice and live-state banners, mounting a page's template,
// and coalescing repeated refresh requests into one run at a time.

export const FINISHED = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
export const TICK_MS = 1000;

export const $ = (id) => document.getElementById(id);

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return el;
}

export const badge = (status) => h("span", { class: `badge s-${status}` }, status);

export function bar(percent, extraClass = "") {
  const fill = h("div", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  return h("div", { class: `bar ${extraClass}` }, fill);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} m`;
}

export const ms = (iso) => (iso ? Date.parse(iso) : null);
// Formatters made once: toLocaleString() builds one per call, too slow for a long list.
export const TIME = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
export const clock = (iso) => (iso ? TIME.format(ms(iso)) : "—");
export const when = (iso) => (iso ? DATE_TIME.format(ms(iso)) : "—");

export function ago(iso) {
  const seconds = (Date.now() - ms(iso)) / 1000;
  if (seconds < 5) return "just now";
  if (seconds < 3600) return `${duration(seconds).replace(/\.\d+/, "")} ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return when(iso);
}

export function elapsed(job) {
  if (!job.started_at) return null;
  return ((job.finished_at ? ms(job.finished_at) : Date.now()) - ms(job.started_at)) / 1000;
}

// `task` run `delay` ms after a request, one run at a time: a request made while it runs
// gets one more run after it, so a read never ends older than the last change announced.
export function coalesce(task, delay) {
  let running = false;
  let again = false;
  let timer = null;
  const run = async () => {
    timer = null;
    running = true;
    try {
      await task();
    } finally {
      running = false;
      if (again) {
        again = false;
        request();
      }
    }
  };
  const request = () => {
    if (running) again = true;
    else timer ??= setTimeout(run, delay);
  };
  request.cancel = () => clearTimeout(timer);
  return request;
}

export function notice(message) {
  $("notice").textContent = message || "";
  $("notice").hidden = !message;
}

export function setLive(state) {
  const labels = { live: "live", reconnecting: "reconnecting…", done: "up to date", off: "offline" };
  $("live").dataset.state = state;
  $("live").textContent = labels[state];
}

export function mount(template, name) {
  $("view").replaceChildren($(template).content.cloneNode(true));
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === name);
  }
}
