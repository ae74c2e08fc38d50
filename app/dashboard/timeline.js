// A job's timeline from its events: each step's phases (queued, waiting for a slot,
// running, retrying) with their outcome, and the class that colours each phase.

import { ms } from "./ui.js?v={{version}}";

// Each step's phases from the job's events: queued, waiting for a slot, running, retrying.
export function phasesOf(events, stepCount) {
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
export const segClass = (phase) => `seg ${phase.kind}${phase.outcome?.startsWith("failed") ? " failed" : ""}`;

export const PHASE_NAMES = {
  queued: "queued",
  waiting: "waiting for a slot",
  running: "running",
  retrying: "retrying",
};
