// The CAO Gateway dashboard: one module for its three pages (jobs, one job, services).
// It reads the REST API under /api/v1 and follows /ws (every job) or /ws/{id} (one job),
// resuming a dropped socket after the last event it handed on, so that no event is
// lost or applied twice. It talks to this origin only.

const API = "/api/v1";
const KEY_STORE = "cao.apiKey";
const PAGE_SIZE = 50;
const FINISHED = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const TERMINAL = new Set(["JOB_COMPLETED", "JOB_ERROR", "JOB_CANCELLED"]);
const SERVICES_EVERY_MS = 1000;
const TICK_MS = 1000;

// ---- DOM and formatting ------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
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

const badge = (status) => h("span", { class: `badge s-${status}` }, status);

function bar(percent, extraClass = "") {
  const fill = h("div", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  return h("div", { class: `bar ${extraClass}` }, fill);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} m`;
}

const ms = (iso) => (iso ? Date.parse(iso) : null);
// Formatters made once: toLocaleString() builds one per call, too slow for a long list.
const TIME = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const clock = (iso) => (iso ? TIME.format(ms(iso)) : "—");
const when = (iso) => (iso ? DATE_TIME.format(ms(iso)) : "—");

function ago(iso) {
  const seconds = (Date.now() - ms(iso)) / 1000;
  if (seconds < 5) return "just now";
  if (seconds < 3600) return `${duration(seconds).replace(/\.\d+/, "")} ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return when(iso);
}

function elapsed(job) {
  if (!job.started_at) return null;
  return ((job.finished_at ? ms(job.finished_at) : Date.now()) - ms(job.started_at)) / 1000;
}

// `task` run `delay` ms after a request, one run at a time: a request made while it runs
// gets one more run after it, so a read never ends older than the last change announced.
function coalesce(task, delay) {
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

function notice(message) {
  $("notice").textContent = message || "";
  $("notice").hidden = !message;
}

function setLive(state) {
  const labels = { live: "live", reconnecting: "reconnecting…", done: "up to date", off: "offline" };
  $("live").dataset.state = state;
  $("live").textContent = labels[state];
}

// ---- API key and REST ------------------------------------------------------------

const auth = {
  get key() {
    return sessionStorage.getItem(KEY_STORE);
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
  },
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", body } = {}) {
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

let me = null; // {role, tenant, keys_required} of the key in use
let view = null; // the open page: {stop()}

function askForKey(reason) {
  view?.stop();
  view = null;
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

async function start() {
  view?.stop();
  view = null;
  try {
    me = await api("/whoami");
  } catch (error) {
    if (error.status !== 401) notice(`The gateway did not answer: ${error.message}`);
    return;
  }
  $("key-prompt").hidden = true;
  $("change-key").hidden = !me.keys_required;
  $("identity").textContent = me.keys_required
    ? `${me.role} · ${me.role === "operator" ? "all tenants" : me.tenant}`
    : "open gateway (no keys)";
  view = route(location.pathname)();
}

function route(path) {
  const job = path.match(/^\/dashboard\/jobs\/([0-9a-fA-F-]{36})\/?$/);
  if (job) return () => new JobView(job[1]);
  if (/^\/dashboard\/services\/?$/.test(path)) return () => new ServicesView();
  return () => new JobsView();
}

function mount(template, name) {
  $("view").replaceChildren($(template).content.cloneNode(true));
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === name);
  }
}

// ---- following a WebSocket -------------------------------------------------------

class Follower {
  // Events of `path` after `position` (an event's `id` on /ws, its `seq` on /ws/{id}).
  constructor(path, field, position, onEvent, { endsWithJob = false } = {}) {
    Object.assign(this, { path, field, position, onEvent, endsWithJob });
    this.socket = null;
    this.retries = 0;
    this.stopped = false;
    this.open();
  }

  open() {
    const url = new URL(this.path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("after", String(this.position));
    if (auth.key) url.searchParams.set("api_key", auth.key); // a browser cannot set headers
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = (close) => this.closed(socket, close);
  }

  receive(event) {
    if (event.type === "WS_CONNECTED") {
      this.retries = 0;
      setLive("live");
      return;
    }
    if (event[this.field] <= this.position) return;
    this.position = event[this.field];
    this.onEvent(event);
  }

  closed(socket, close) {
    if (this.socket !== socket || this.stopped) return;
    this.socket = null;
    if (close.code === 4401 || close.code === 4403) return askForKey(close.reason);
    if (close.code === 4004 || (close.code === 1000 && this.endsWithJob)) return setLive("done");
    setLive("reconnecting");
    this.timer = setTimeout(() => this.open(), Math.min(5000, 250 * 2 ** this.retries++));
  }

  ensureOpen() {
    if (this.socket || this.stopped) return;
    clearTimeout(this.timer);
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close(1000);
  }
}

// A job as an event leaves it (the list's rows follow events between REST reads);
// returns the job's status. `seenEventId`: the log position the row already reflects.
function applyEvent(job, event) {
  if (event.id <= (job.seenEventId ?? 0)) return job.status;
  job.seenEventId = event.id;
  if (FINISHED.has(job.status) && event.type !== "JOB_RESUMED" && !TERMINAL.has(event.type)) {
    return job.status; // an older event replayed after a read that already showed the end
  }
  job.progress = event.progress;
  if (event.step_index !== null) {
    job.current_step = event.step_index;
    job.current_step_name = event.step_name;
  }
  const status = {
    JOB_CREATED: "PENDING",
    JOB_RESUMED: "PENDING",
    JOB_COMPLETED: "COMPLETED",
    JOB_ERROR: "FAILED",
    JOB_CANCELLED: "CANCELLED",
  }[event.type];
  job.status = status ?? "RUNNING";
  if (job.status === "RUNNING") job.started_at ??= event.ts;
  if (FINISHED.has(job.status)) job.finished_at = event.ts;
  if (event.type === "JOB_RESUMED") job.finished_at = job.error = job.error_code = null;
  if (event.type === "JOB_ERROR") {
    job.error = event.data.error;
    job.error_code = event.data.code;
  }
  return job.status;
}

// ---- /dashboard: jobs, newest first ------------------------------------------------

class JobsView {
  constructor() {
    mount("jobs-view", "jobs");
    this.jobs = new Map(); // job_id -> summary, in display order (newest first)
    this.trs = new Map();
    this.dirty = new Set();
    this.pages = 1;
    for (const id of ["filter-status", "filter-feature"]) {
      $(id).addEventListener("change", () => this.filterChanged());
    }
    $("load-more").addEventListener("click", () => this.loadMore());
    $("new-jobs").addEventListener("click", () => this.reload());
    $("jobs-body").addEventListener("click", (e) => this.open(e));
    document.querySelector(".col-tenant").hidden = me.role !== "operator";
    // Relative times and running durations move on their own.
    this.ticker = setInterval(() => this.tick(), TICK_MS * 5);
    this.refreshHead = coalesce(() => this.reload(), 250);
    this.begin();
  }

  // The first page, then every event after the log position that page was read at.
  async begin() {
    const query = new URLSearchParams(location.search);
    $("filter-status").value = query.get("status") ?? "";
    await this.loadFeatures(query.get("feature") ?? "");
    while (this.lastEventId === undefined && !this.stopped) {
      await this.reload();
      if (this.lastEventId === undefined) await new Promise((r) => setTimeout(r, 2000));
    }
    if (this.stopped) return;
    this.follower = new Follower("/ws", "id", this.lastEventId, (e) => this.onEvent(e));
  }

  async loadFeatures(selected) {
    const select = $("filter-feature");
    try {
      const { features } = await api("/features");
      select.append(...features.map((f) => h("option", { value: f.name }, f.name)));
    } catch {
      select.append(h("option", { value: selected }, selected));
    }
    select.value = selected;
  }

  filters() {
    const params = new URLSearchParams();
    if ($("filter-status").value) params.set("status", $("filter-status").value);
    if ($("filter-feature").value) params.set("feature_name", $("filter-feature").value);
    return params;
  }

  filterChanged() {
    const shown = this.filters();
    if (shown.has("feature_name")) shown.set("feature", shown.get("feature_name"));
    shown.delete("feature_name");
    history.replaceState(null, "", `/dashboard${shown.size ? `?${shown}` : ""}`);
    this.reload();
  }

  async fetchPage(cursor) {
    const params = this.filters();
    params.set("limit", String(PAGE_SIZE));
    if (cursor) params.set("cursor", cursor);
    const page = await api(`/jobs?${params}`);
    this.lastEventId ??= page.last_event_id;
    return page;
  }

  // The newest page again; rows updated by events newer than the read keep their state.
  async reload() {
    const page = await this.fetchPage(null).catch((error) => notice(error.message));
    if (!page) return;
    notice("");
    const old = this.jobs;
    this.jobs = new Map();
    this.merge(page, old);
    this.trs.clear();
    this.cursor = page.next_cursor;
    this.pages = 1;
    this.unseen = 0;
    this.render();
  }

  async loadMore() {
    const page = await this.fetchPage(this.cursor).catch((error) => notice(error.message));
    if (!page) return;
    this.merge(page, this.jobs);
    for (const item of page.items) this.dirty.add(item.job_id);
    this.cursor = page.next_cursor;
    this.pages += 1;
    this.render();
  }

  // A page read at log position P shows every change up to P; a row that events have
  // carried past P keeps what they made of it.
  merge(page, known) {
    for (const item of page.items) {
      const mine = known.get(item.job_id);
      const newer = mine && mine.seenEventId > page.last_event_id;
      this.jobs.set(item.job_id, newer ? mine : { ...item, seenEventId: page.last_event_id });
    }
  }

  onEvent(event) {
    const job = this.jobs.get(event.job_id);
    if (job) {
      applyEvent(job, event);
      this.dirty.add(job.job_id);
    } else if (this.mayList(event)) {
      this.arrived();
    }
    this.scheduleRender();
  }

  // Whether a job not shown may belong at the top now: a new one, or one that has just
  // reached the status the list is filtered by.
  mayList(event) {
    if (event.type === "JOB_CREATED") return true;
    const wanted = $("filter-status").value;
    return Boolean(wanted) && wanted === applyEvent({ status: "" }, event);
  }

  // New jobs go on top while one page is shown; deeper in the list a banner offers them.
  arrived() {
    if (this.pages > 1) {
      this.unseen += 1;
      return;
    }
    this.refreshHead();
  }

  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  // Rows are kept per job and refilled when an event changed them (or on the clock).
  tick() {
    for (const job of this.jobs.values()) {
      const [created, took] = this.trs.get(job.job_id)?.clocks ?? [];
      if (!created) continue;
      created.textContent = ago(job.created_at);
      if (!FINISHED.has(job.status)) took.textContent = duration(elapsed(job));
    }
  }

  render() {
    const rows = [];
    for (const job of this.jobs.values()) {
      let tr = this.trs.get(job.job_id);
      if (!tr) this.trs.set(job.job_id, (tr = h("tr", { dataset: { jobId: job.job_id } })));
      if (this.dirty.has(job.job_id) || !tr.firstChild) this.fill(tr, job);
      rows.push(tr);
    }
    this.dirty.clear();
    for (const id of this.trs.keys()) if (!this.jobs.has(id)) this.trs.delete(id);
    // Rows stay in the DOM while their place holds: an older page is appended below.
    const body = $("jobs-body");
    const shown = body.children;
    let same = 0;
    while (same < rows.length && shown[same] === rows[same]) same += 1;
    if (same === shown.length) body.append(...rows.slice(same));
    else body.replaceChildren(...rows);
    $("jobs-empty").hidden = rows.length > 0;
    $("load-more").hidden = !this.cursor;
    $("jobs-count").textContent = `${rows.length} shown, newest first`;
    $("new-jobs").hidden = !this.unseen;
    $("new-jobs").textContent = `${this.unseen} new job(s): show the newest`;
  }

  fill(tr, job) {
    tr.className = `s-${job.status}`;
    tr.dataset.status = job.status;
    const step = job.status === "COMPLETED" ? job.total_steps : job.current_step + 1;
    const where = `${step}/${job.total_steps}`;
    const name = job.status === "COMPLETED" ? "" : (job.current_step_name ?? "");
    const error = job.error ? `${job.error_code ?? "error"}: ${job.error}` : "";
    const tenant = h("td", { class: "col-tenant" }, job.tenant ?? "");
    const created = h("td", { class: "col-time", title: when(job.created_at) }, ago(job.created_at));
    const took = h("td", { class: "col-time" }, duration(elapsed(job)));
    tr.clocks = [created, took];
    const href = `/dashboard/jobs/${job.job_id}`;
    const link = h("a", { href, title: job.job_id }, job.job_id.slice(0, 8));
    tenant.hidden = me.role !== "operator";
    tr.replaceChildren(
      h("td", { class: "col-status" }, badge(job.status)),
      h("td", { class: "mono" }, link),
      h("td", {}, job.feature_name),
      tenant,
      h("td", { class: "col-progress" }, bar(job.progress), h("span", { class: "pct" }, `${job.progress}%`)),
      h("td", {}, h("span", { class: "muted" }, where), " ", name),
      created,
      took,
      h("td", { class: "col-error", title: error }, error),
    );
  }

  open(event) {
    const tr = event.target.closest("tr");
    if (tr && !event.target.closest("a") && !getSelection().toString()) {
      location.href = `/dashboard/jobs/${tr.dataset.jobId}`;
    }
  }

  stop() {
    this.stopped = true;
    this.follower?.stop();
    clearInterval(this.ticker);
    this.refreshHead.cancel();
  }
}

// ---- /dashboard/jobs/{id}: one job's steps, attempts and timeline ----------------------

// Each step's phases from the job's events: queued, waiting for a slot, running, retrying.
function phasesOf(events, stepCount) {
  const steps = Array.from({ length: stepCount }, () => []);
  const open = new Map();
  const close = (index, ts, outcome) => {
    const phase = open.get(index);
    if (!phase) return;
    Object.assign(phase, { end: ts, outcome: outcome ?? phase.outcome });
    open.delete(index);
  };
  const begin = (index, kind, ts, attempt) => {
    if (index === null || index >= stepCount) return;
    close(index, ts);
    const phase = { kind, start: ts, end: null, attempt };
    steps[index].push(phase);
    open.set(index, phase);
  };
  for (const e of events) {
    const t = ms(e.ts);
    const i = e.step_index;
    if (e.type === "JOB_CREATED") begin(0, "queued", t, 1);
    else if (e.type === "JOB_RESUMED") begin(i, "queued", t, 1);
    else if (e.type === "WAITING_FOR_SLOT") begin(i, "waiting", t, e.attempt);
    else if (e.type === "STEP_STARTED") begin(i, "running", t, e.attempt);
    else if (e.type === "STEP_RETRYING") {
      close(i, t, `failed (${e.data.code})`);
      begin(i, "retrying", t, e.data.next_attempt);
    } else if (e.type === "STEP_COMPLETED") {
      close(i, t, "completed");
      begin(i + 1, "queued", t, 1);
    } else if (e.type === "JOB_ERROR") close(i, t, `failed (${e.data.code})`);
    else if (e.type === "JOB_CANCELLED") {
      for (const index of [...open.keys()]) close(index, t, "cancelled");
    }
  }
  return steps;
}

// A phase's colour: its kind, or red for an attempt that failed.
const segClass = (phase) => `seg ${phase.kind}${phase.outcome?.startsWith("failed") ? " failed" : ""}`;

const PHASE_NAMES = {
  queued: "queued",
  waiting: "waiting for a slot",
  running: "running",
  retrying: "retrying",
};

class JobView {
  constructor(jobId) {
    mount("job-view", null);
    this.jobId = jobId;
    this.events = [];
    this.opened = new Set(); // steps whose output is unfolded
    $("job-id").textContent = jobId;
    $("resume").addEventListener("click", () => this.act("resume", {}));
    $("resume-from").addEventListener("click", () => {
      this.act("resume", { from_step: Number($("resume-step").value) });
    });
    $("cancel").addEventListener("click", () => this.cancelClicked());
    this.ticker = setInterval(() => this.tick(), TICK_MS);
    this.refreshSoon = coalesce(() => this.refresh(), 200);
    this.refresh().then(() => {
      if (!this.job || this.stopped) return;
      const onEvent = (event) => this.onEvent(event);
      this.follower = new Follower(`/ws/${jobId}`, "seq", 0, onEvent, { endsWithJob: true });
    });
  }

  tick() {
    if (!this.job || FINISHED.has(this.job.status)) return;
    this.follower?.ensureOpen(); // its stream may have ended just before a resume
    this.render();
  }

  async refresh() {
    try {
      this.job = await api(`/jobs/${this.jobId}`);
    } catch (error) {
      if (error.status === 404) {
        notice(`Job ${this.jobId} does not exist, or belongs to another tenant.`);
      }
      else if (error.status !== 401) notice(error.message);
      return;
    }
    this.render();
  }

  onEvent(event) {
    this.events.push(event);
    // The REST read is the truth for each step; events drive the timeline in between.
    this.refreshSoon();
    this.frame ??= requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  render() {
    const job = this.job;
    if (!job) return;
    document.title = `${job.feature_name} ${job.job_id.slice(0, 8)} · CAO Gateway`;
    $("job-title").textContent = job.feature_name;
    $("job-status").replaceChildren(badge(job.status));
    $("job-fill").style.width = `${job.progress}%`;
    $("job-fill").closest(".job-progress").className = `job-progress s-${job.status}`;
    $("job-percent").textContent = `${job.progress}%`;
    this.renderFacts(job);
    this.renderError(job);
    this.renderActions(job);
    this.renderSteps(job);
    this.renderEvents();
  }

  renderFacts(job) {
    const facts = [
      ["Tenant", job.tenant],
      ["Created", when(job.created_at)],
      ["Started", clock(job.started_at)],
      ["Finished", clock(job.finished_at)],
      ["Duration", duration(elapsed(job))],
      ["Step", `${Math.min(job.current_step + 1, job.total_steps)} of ${job.total_steps}`],
    ];
    const fact = ([name, value]) => h("div", {}, h("span", { class: "muted" }, name), h("b", {}, value ?? "—"));
    $("job-facts").replaceChildren(...facts.map(fact));
  }

  renderError(job) {
    $("job-error").hidden = job.status !== "FAILED";
    if (job.status !== "FAILED") return;
    const retry = job.retryable ? "retryable: resuming may succeed" : "not retryable";
    $("job-error").replaceChildren(
      h("b", {}, `Failed at step ${job.current_step} (${job.current_step_name ?? "?"}): `),
      h("span", { class: "mono" }, job.error_code ?? ""),
      h("div", {}, job.error ?? ""),
      h("div", { class: "muted" }, retry),
    );
  }

  renderActions(job) {
    const operator = me.role === "operator";
    $("job-actions").hidden = !operator;
    if (!operator) return;
    const failed = job.status === "FAILED";
    $("resume").hidden = !failed;
    $("cancel").hidden = FINISHED.has(job.status);
    $("resume-from-group").hidden = !FINISHED.has(job.status);
    $("resume-from").textContent = failed ? "Resume from step" : "Rerun from step";
    // A failed job resumes at or before the step that failed; a finished one reruns any.
    const last = failed ? job.current_step : job.total_steps - 1;
    const select = $("resume-step");
    const wanted = select.value === "" ? String(last) : select.value;
    if (select.options.length !== last + 1) {
      const option = (s) => h("option", { value: s.step_index }, `${s.step_index}: ${s.step_name}`);
      select.replaceChildren(...job.steps.slice(0, last + 1).map(option));
      select.value = Number(wanted) <= last ? wanted : String(last);
    }
  }

  renderSteps(job) {
    const phases = phasesOf(this.events, job.steps.length);
    const all = phases.flat();
    const t0 = all.length ? Math.min(...all.map((p) => p.start)) : ms(job.created_at);
    const ends = all.map((p) => p.end ?? Date.now());
    const span = Math.max(1, (ends.length ? Math.max(...ends) : Date.now()) - t0);
    const rows = job.steps.flatMap((step, i) => this.stepRows(step, phases[i], t0, span));
    $("steps-body").replaceChildren(...rows);
  }

  stepRows(step, phases, t0, span) {
    const track = h("div", { class: "track" });
    for (const p of phases) {
      const took = (p.end ?? Date.now()) - p.start;
      const title = `${PHASE_NAMES[p.kind]} ${duration(took / 1000)}`;
      const seg = h("div", { class: segClass(p), title });
      seg.style.left = `${((p.start - t0) / span) * 100}%`;
      seg.style.width = `${Math.max(0.4, (took / span) * 100)}%`;
      track.append(seg);
    }
    const ran = phases.filter((p) => p.kind === "running").length;
    const attempts = h("span", {}, step.attempt ? `${step.attempt} of ${step.max_attempts}` : "—");
    if (ran > step.attempt) attempts.title = `${ran} runs in all, counting resumes`;
    const running = step.status === "RUNNING" && step.started_at;
    const live = running ? (Date.now() - ms(step.started_at)) / 1000 : null;
    const main = h("tr", { class: `step s-${step.status}`, dataset: { step: step.step_index } },
      h("td", { class: "col-index" }, String(step.step_index)),
      h("td", {}, h("b", {}, step.step_name), h("span", { class: "muted" }, ` · ${step.queue}`)),
      h("td", { class: "col-status" }, badge(step.status)),
      h("td", { class: "col-attempts attempts" }, attempts),
      h("td", { class: "col-time duration" }, duration(step.duration_s ?? live)),
      h("td", { class: "col-timeline" }, track),
    );
    const detail = h("td", { colspan: 6 }, h("div", { class: "phases" }, this.phaseText(phases, step.status)));
    if (step.error) {
      detail.append(h("div", { class: "error-text" }, `${step.error_code ?? "error"}: ${step.error}`));
    }
    if (step.output) {
      // Rows are redrawn as the job moves: an output someone opened stays open.
      const index = step.step_index;
      const text = JSON.stringify(step.output, null, 2);
      const output = h("details", { open: this.opened.has(index) }, h("summary", {}, "Output"), h("pre", {}, text));
      output.addEventListener("toggle", () => {
        if (output.open) this.opened.add(index);
        else this.opened.delete(index);
      });
      detail.append(output);
    }
    return [main, h("tr", { class: "detail" }, detail)];
  }

  phaseText(phases, status) {
    const shown = phases.filter((p) => p.end === null || p.end - p.start >= 1);
    if (!shown.length) return status === "PENDING" ? "not started" : "";
    return shown.map((p, i) => {
      const took = duration(((p.end ?? Date.now()) - p.start) / 1000);
      const label = p.kind === "running" ? `attempt ${p.attempt} running` : PHASE_NAMES[p.kind];
      const good = p.outcome === "completed";
      const outcome = p.outcome ? h("span", { class: good ? "ok" : "bad" }, ` → ${p.outcome}`) : "";
      const text = `${label} ${took}${p.end ? "" : "…"}`;
      return h("span", { class: "phase" }, i ? " · " : "", h("i", { class: segClass(p) }), text, outcome);
    });
  }

  renderEvents() {
    $("event-count").textContent = `(${this.events.length})`;
    const rows = this.events.slice(-200).map((e) =>
      h("tr", {},
        h("td", {}, String(e.seq)),
        h("td", {}, clock(e.ts)),
        h("td", {}, e.type),
        h("td", {}, e.step_index === null ? "" : `${e.step_index} ${e.step_name}`),
        h("td", {}, e.attempt === null ? "" : String(e.attempt)),
        h("td", { class: "mono" }, e.data.error ?? e.data.code ?? ""),
      ));
    $("events-body").replaceChildren(...rows);
  }

  cancelClicked() {
    const button = $("cancel");
    if (button.dataset.armed) {
      delete button.dataset.armed;
      return this.act("cancel", undefined);
    }
    button.dataset.armed = "1";
    button.textContent = "Click again to cancel";
    setTimeout(() => {
      delete button.dataset.armed;
      button.textContent = "Cancel job";
    }, 4000);
  }

  async act(action, body) {
    $("action-result").textContent = "…";
    try {
      this.job = await api(`/jobs/${this.jobId}/${action}`, { method: "POST", body });
      const done = action === "cancel" ? "Cancelled." : `Resumed from step ${this.job.current_step}.`;
      $("action-result").textContent = done;
      this.follower?.ensureOpen(); // the stream of a finished job had ended
      this.render();
      this.refreshSoon(); // after any read that was under way when the action landed
    } catch (error) {
      $("action-result").textContent = `${action} refused: ${error.message}`;
    }
  }

  stop() {
    this.stopped = true;
    this.follower?.stop();
    clearInterval(this.ticker);
    this.refreshSoon.cancel();
  }
}

// ---- /dashboard/services: load per service and queue --------------------------------

class ServicesView {
  constructor() {
    mount("services-view", "services");
    this.stopped = false;
    this.poll();
  }

  async poll() {
    try {
      this.render(await api("/services"));
      notice("");
      setLive("live");
    } catch (error) {
      if (error.status === 401) return;
      setLive("reconnecting");
      if (error.status === 403) {
        notice("The services view needs an operator key.");
        return setLive("off");
      }
      notice(`Services unavailable: ${error.message}`);
    }
    if (!this.stopped) this.timer = setTimeout(() => this.poll(), SERVICES_EVERY_MS);
  }

  render({ services, queues }) {
    const count = (value) => (value === null || value === undefined ? "?" : String(value));
    $("services-body").replaceChildren(...services.map((s) => {
      const used = s.leases_in_use ?? 0;
      const state = used >= s.limit ? "full" : s.waiting ? "busy" : "";
      const leases = h("span", { class: "leases" }, count(s.leases_in_use));
      return h("tr", { class: state, dataset: { service: s.name } },
        h("td", {}, h("b", {}, s.name)),
        h("td", { class: "muted" }, s.kind),
        h("td", {}, s.queue),
        h("td", { class: "col-leases" }, bar((used / s.limit) * 100), leases),
        h("td", { class: "num" }, String(s.limit)),
        h("td", { class: "num waiting" }, count(s.waiting)),
        h("td", { class: "num depth" }, count(s.queue_depth)),
        h("td", { class: "num" }, `${s.timeout_s} s`),
        h("td", { class: "num" }, String(s.max_attempts)),
      );
    }));
    const servedBy = (queue) => services.filter((s) => s.queue === queue).map((s) => s.name).join(", ");
    $("queues-body").replaceChildren(...(queues ?? []).map((q) =>
      h("tr", { dataset: { queue: q.name } },
        h("td", {}, h("b", {}, q.name)),
        h("td", { class: "num depth" }, count(q.depth)),
        h("td", { class: "muted" }, servedBy(q.name)),
      )));
    const every = `every ${SERVICES_EVERY_MS / 1000} s`;
    $("services-updated").textContent = `updated ${TIME.format(Date.now())}, ${every}`;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

// ---- start ---------------------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  auth.key = $("key-input").value.trim();
  $("key-input").value = "";
  start();
});
$("change-key").addEventListener("click", () => {
  auth.key = null;
  askForKey();
});
start();
