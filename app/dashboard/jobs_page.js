// /dashboard: the jobs, newest first. The first page is read over REST with the event
// log position it stands at, then rows follow /ws from there; filters, older pages and
// the "new jobs" banner re-read the list.

import { api, session } from "./api.js?v={{version}}";
import { Follower } from "./live.js?v={{version}}";
import { $, FINISHED, TICK_MS, ago, badge, bar, coalesce, duration, elapsed, h, mount, notice, when } from "./ui.js?v={{version}}";

const PAGE_SIZE = 50;
const TERMINAL = new Set(["JOB_COMPLETED", "JOB_ERROR", "JOB_CANCELLED"]);

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

export class JobsView {
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
    document.querySelector(".col-tenant").hidden = session.me.role !== "operator";
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
    tenant.hidden = session.me.role !== "operator";
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
