// Recent jobs: the service's own list (GET /api/jobs), so it survives a reload.
//
// Each entry is a link to #job=ID, which the page follows like any other: a finished job
// shows its article, a running one's stream is joined. Entries are updated in place, so a
// refresh never takes the keyboard focus away from the link it is on.

import { callApi, errorOf } from "./api.js";
import { ageText, costText } from "./format.js";

const LIMIT = 10;
// Ages are redrawn this often; the list itself is asked for again only when something changed.
const AGE_TICK_MS = 30_000;

export class RecentJobs {
  constructor({ list, empty, error, refresh }) {
    this.list = list;
    this.empty = empty;
    this.error = error;
    this.items = new Map(); // id -> {li, link, status, time, cost}
    this.jobs = [];
    this.current = "";
    refresh.addEventListener("click", () => this.load());
    setInterval(() => this.drawAges(), AGE_TICK_MS);
  }

  async load() {
    const { res, body } = await callApi("GET", `/api/jobs?limit=${LIMIT}`);
    if (res && res.status === 401) return; // the token form is up; it loads us again
    const ok = res && res.ok && body && Array.isArray(body.jobs);
    this.error.hidden = Boolean(ok);
    if (!ok) {
      const error = errorOf(res, body);
      this.error.textContent = `Could not load recent jobs: ${error.message} (${error.code})`;
      return;
    }
    this.jobs = body.jobs.filter((job) => job && typeof job.id === "string");
    this.draw();
  }

  markCurrent(id) {
    this.current = id || "";
    for (const [jobId, item] of this.items) {
      if (jobId === this.current) item.link.setAttribute("aria-current", "true");
      else item.link.removeAttribute("aria-current");
    }
  }

  draw() {
    const seen = new Set();
    this.jobs.forEach((job, position) => {
      seen.add(job.id);
      const item = this.items.get(job.id) || this.item(job.id);
      item.link.textContent = String(job.topic ?? "");
      item.status.textContent = String(job.status ?? "");
      item.status.dataset.status = String(job.status ?? "");
      item.time.dateTime = String(job.created_at ?? "");
      item.cost.textContent = costText(job.usage);
      item.cost.hidden = !item.cost.textContent;
      // Move a node only when it is out of place: moving the focused link would blur it.
      if (this.list.children[position] !== item.li) {
        this.list.insertBefore(item.li, this.list.children[position] || null);
      }
    });
    for (const [id, item] of this.items) {
      if (!seen.has(id)) {
        item.li.remove();
        this.items.delete(id);
      }
    }
    this.empty.hidden = this.items.size > 0;
    this.drawAges();
    this.markCurrent(this.current);
  }

  drawAges() {
    const now = Date.now();
    for (const item of this.items.values()) item.time.textContent = ageText(item.time.dateTime, now);
  }

  item(id) {
    const li = document.createElement("li");
    li.className = "recent-item";
    const link = document.createElement("a");
    link.className = "recent-topic";
    link.href = `#job=${encodeURIComponent(id)}`;
    const meta = document.createElement("span");
    meta.className = "recent-meta";
    const status = document.createElement("span");
    status.className = "status";
    const time = document.createElement("time");
    const cost = document.createElement("span");
    cost.className = "recent-cost";
    meta.append(status, time, cost);
    li.append(link, meta);
    const item = { li, link, status, time, cost };
    this.items.set(id, item);
    return item;
  }
}
