// /dashboard/services: lease use, waiters and queue depth per service and queue, read
// over REST once a second (an operator's view).

import { api } from "./api.js?v={{version}}";
import { $, TIME, bar, h, mount, notice, setLive } from "./ui.js?v={{version}}";

const SERVICES_EVERY_MS = 1000;

export class ServicesView {
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
