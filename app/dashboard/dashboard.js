// The CAO Gateway dashboard's entry: asks who the key in use is, then opens the page the
// path names (jobs, one job, services); the key form and "change key" restart it. Each
// module it imports owns one part; every import carries the assets' version, which the
// API fills in, so a page never runs a mix of old and new modules.

import { api, askForKey, auth, session } from "./api.js?v={{version}}";
import { JobView } from "./job_page.js?v={{version}}";
import { JobsView } from "./jobs_page.js?v={{version}}";
import { ServicesView } from "./services_page.js?v={{version}}";
import { $, notice } from "./ui.js?v={{version}}";

async function start() {
  session.view?.stop();
  session.view = null;
  try {
    session.me = await api("/whoami");
  } catch (error) {
    if (error.status !== 401) notice(`The gateway did not answer: ${error.message}`);
    return;
  }
  $("key-prompt").hidden = true;
  $("change-key").hidden = !session.me.keys_required;
  $("identity").textContent = session.me.keys_required
    ? `${session.me.role} · ${session.me.role === "operator" ? "all tenants" : session.me.tenant}`
    : "open gateway (no keys)";
  session.view = route(location.pathname)();
}

function route(path) {
  const job = path.match(/^\/dashboard\/jobs\/([0-9a-fA-F-]{36})\/?$/);
  if (job) return () => new JobView(job[1]);
  if (/^\/dashboard\/services\/?$/.test(path)) return () => new ServicesView();
  return () => new JobsView();
}

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
