// /dashboard/jobs/{id}: one job's steps, attempts, timeline and events, read over REST
// and kept current by /ws/{id}; an operator may cancel, resume or rerun it from here.

import { api, session } from "./api.js?v={{version}}";
import { Follower } from "./live.js?v={{version}}";
import { PHASE_NAMES, phasesOf, segClass } from "./timeline.js?v={{version}}";
import { $, FINISHED, TICK_MS, badge, clock, coalesce, duration, elapsed, h, mount, ms, notice, when } from "./ui.js?v={{version}}";


export class JobView {
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
    const operator = session.me.role === "operator";
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
