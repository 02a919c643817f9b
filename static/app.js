// ArticleStream demo page: submit a topic, then follow the job's event stream.
//
// Every event updates one model and the page is drawn from that model, so an event
// seen twice (a replay after a reconnect) changes nothing. Text that came from the
// user or the model reaches the DOM only through textContent, except the article,
// which goes through the locked-down Markdown renderer in article.js.

import { callApi, errorOf, eventsUrl, jobPath, setToken, whenUnauthorized } from "./api.js";
import { ArticleView } from "./article.js";
import { usageText } from "./format.js";
import { RecentJobs } from "./recent.js";

const STAGE_NAMES = {
  queued: "Queued",
  outline: "Planning the outline",
  content: "Writing sections",
  style: "Styling the article",
  done: "Done",
};
// pipeline/contract.py's JOB_ID_PATTERN: on Fly without Redis an id names its machine.
const JOB_ID = /^j_(?:[0-9a-z]{1,40}\.)?[A-Za-z0-9_-]{22}$/;
const GONE = "This job no longer exists; it may have expired.";
// How long to wait before asking again when the stream was refused (e.g. 429).
const RETRY_MS = 3000;
// Refused streams in a row after which an ended job's snapshot stands in for the rest.
const REFUSALS_BEFORE_SNAPSHOT = 3;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("topic-form"),
  topic: $("topic"),
  submit: $("submit"),
  formError: $("form-error"),
  job: $("job"),
  jobTopic: $("job-topic"),
  jobId: $("job-id"),
  connection: $("connection"),
  cancel: $("cancel"),
  progress: $("progress"),
  progressValue: $("progress-value"),
  stage: $("stage"),
  status: $("status"),
  error: $("error"),
  errorCode: $("error-code"),
  errorMessage: $("error-message"),
  cancelled: $("cancelled"),
  cancelledMessage: $("cancelled-message"),
  outlinePanel: $("outline-panel"),
  outline: $("outline"),
  sectionsPanel: $("sections-panel"),
  sections: $("sections"),
  articlePanel: $("article-panel"),
  articleState: $("article-state"),
  article: $("article"),
  usage: $("usage"),
  tokenPanel: $("token-panel"),
  tokenForm: $("token-form"),
  token: $("token"),
  tokenError: $("token-error"),
};
const article = new ArticleView({
  body: $("article"),
  copy: $("copy"),
  download: $("download"),
  copyStatus: $("copy-status"),
});
const recent = new RecentJobs({
  list: $("recent"),
  empty: $("recent-empty"),
  error: $("recent-error"),
  refresh: $("recent-refresh"),
});
// While a job runs its usage is asked for at most this often, after events that end LLM calls.
const USAGE_POLL_MS = 1000;

let model = null;
let source = null;
let retryTimer = 0;
let usageTimer = 0;
// index -> {root, body, state} for the section cards on the page
let sectionNodes = new Map();

function newModel(job) {
  return {
    id: job.id,
    topic: job.topic || "",
    status: job.status || "queued",
    stage: job.stage || "queued",
    progress: Number(job.progress) || 0,
    message: "",
    titles: Array.isArray(job.sections) ? job.sections.slice() : [],
    sections: new Map(), // index -> {title, text, final}
    article: "",
    articleFinal: false,
    outcome: null, // {kind: "done" | "error" | "cancelled", code, message}
    lastEventId: 0,
    connection: "connecting",
    refusals: 0, // streams refused in a row (HTTP error, no event-stream, cut in its head)
    cancelling: false,
    // Servers before the usage field have none; then the page never asks for it.
    tracksUsage: Object.hasOwn(job, "usage"),
    usage: job.usage ?? null,
  };
}

// ---- applying events to the model ----

function raiseProgress(value) {
  const n = Number(value);
  if (Number.isFinite(n)) model.progress = Math.max(model.progress, Math.min(100, Math.round(n)));
}

function sectionAt(index) {
  let part = model.sections.get(index);
  if (!part) {
    part = { title: "", text: "", final: false };
    model.sections.set(index, part);
  }
  return part;
}

const apply = {
  status(data) {
    if (data.status) model.status = data.status;
    if (data.stage && data.stage !== model.stage) {
      model.stage = data.stage;
      model.message = "";
    }
    raiseProgress(data.progress);
  },
  outline(data) {
    if (Array.isArray(data.sections)) model.titles = data.sections.map(String);
    raiseProgress(data.progress);
  },
  progress(data) {
    if (data.stage) model.stage = data.stage;
    model.message = typeof data.message === "string" ? data.message : "";
    model.status = "running";
    raiseProgress(data.progress);
  },
  delta(data) {
    const text = typeof data.text === "string" ? data.text : "";
    if (data.stage === "style") {
      if (model.articleFinal) return;
      model.article = data.reset ? text : model.article + text;
      return;
    }
    if (!Number.isInteger(data.index)) return;
    const part = sectionAt(data.index);
    if (part.final) return; // the exact text is already here
    part.text = data.reset ? text : part.text + text;
  },
  section(data) {
    if (!Number.isInteger(data.index)) return;
    const part = sectionAt(data.index);
    part.title = String(data.title ?? "");
    part.text = String(data.content ?? "");
    part.final = true;
    raiseProgress(data.progress);
  },
  done(job) {
    model.status = job.status || "succeeded";
    model.stage = "done";
    model.message = "";
    model.progress = 100;
    if (Array.isArray(job.sections)) model.titles = job.sections.map(String);
    model.article = String(job.article ?? "");
    model.articleFinal = true;
    if (job.usage) model.usage = job.usage;
    model.outcome = { kind: "done" };
  },
  error(data) {
    model.status = "failed";
    model.outcome = outcome("error", data);
  },
  cancelled(data) {
    model.status = "cancelled";
    model.outcome = outcome("cancelled", data);
  },
};

function outcome(kind, data) {
  return { kind, code: String(data.code ?? kind), message: String(data.message ?? "") };
}

// A job snapshot (GET /api/jobs/{id}) that has already ended stands in for its terminal event.
function applySnapshot(job) {
  if (job.status === "succeeded") apply.done(job);
  else if (job.status === "failed") apply.error(job.error || {});
  else if (job.status === "cancelled") apply.cancelled(job.error || {});
  else return false;
  return true;
}

// ---- the event stream ----

function closeStream() {
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
}

function openStream() {
  closeStream();
  const id = model.id;
  const es = new EventSource(eventsUrl(id, model.lastEventId));
  source = es;

  for (const name of Object.keys(apply)) {
    es.addEventListener(name, (event) => {
      if (es !== source || !model || model.id !== id) return;
      const seq = Number(event.lastEventId);
      if (Number.isInteger(seq) && seq > 0) {
        if (seq <= model.lastEventId) return; // a replay of something already applied
        model.lastEventId = seq;
      }
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (data === null || typeof data !== "object") return;
      apply[name](data);
      // The server ends the stream after the terminal event; without close()
      // EventSource would reconnect and get 204.
      if (model.outcome) {
        closeStream();
        recent.load();
      } else if (name === "outline" || name === "section") {
        pollUsage(id);
      }
      render();
    });
  }
  es.addEventListener("open", () => {
    if (es !== source) return;
    model.refusals = 0;
    model.connection = "live";
    render();
  });
  es.addEventListener("error", () => {
    if (es !== source) return;
    if (es.readyState === EventSource.CONNECTING) {
      model.connection = "reconnecting"; // EventSource retries with Last-Event-ID itself
      render();
      return;
    }
    // Closed for good: an HTTP error (404, 429, ...) or a 204. Ask the job itself.
    closeStream();
    model.connection = "offline";
    render();
    reconcile(id);
  });
}

// The stream was refused: the job itself says whether it is gone; else try the stream again.
// A job that has ended still has every event stored, and only its stream carries the
// sections' text, so the snapshot stands in for the rest only when streams keep failing.
async function reconcile(id) {
  const { res, body } = await callApi("GET", jobPath(id));
  if (!model || model.id !== id || model.outcome) return;
  if (res && res.status === 401) return; // the token form is up; a new token reopens the stream
  if (res && res.status === 404) {
    apply.error({ code: "not_found", message: GONE });
    render();
    return;
  }
  model.refusals += 1;
  const givingUp = model.refusals >= REFUSALS_BEFORE_SNAPSHOT;
  if (givingUp && res && res.ok && body && applySnapshot(body)) {
    render();
    return;
  }
  model.connection = "reconnecting";
  render();
  retryTimer = setTimeout(() => {
    if (model && model.id === id && !model.outcome) openStream();
  }, RETRY_MS);
}

// An LLM call has ended (the outline, a section): ask for the job's usage so far, at most
// once per USAGE_POLL_MS. The terminal event carries the final figures itself.
function pollUsage(id) {
  if (!model.tracksUsage || usageTimer) return;
  usageTimer = setTimeout(async () => {
    const { res, body } = await callApi("GET", jobPath(id));
    usageTimer = 0;
    if (!model || model.id !== id || model.outcome || !res || !res.ok || !body) return;
    if (body.usage) model.usage = body.usage;
    render();
  }, USAGE_POLL_MS);
}

function attach(job) {
  closeStream();
  model = newModel(job);
  sectionNodes = new Map();
  ui.sections.replaceChildren();
  ui.outline.replaceChildren();
  article.clear();
  recent.markCurrent(model.id);
  ui.topic.value = model.topic;
  // Even for a finished job the stream replays everything from the first event.
  openStream();
  render();
}

// ---- drawing the model ----

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function statusLine(m) {
  if (m.outcome) {
    if (m.outcome.kind === "done") return "Done: the article is ready.";
    if (m.outcome.kind === "cancelled") return "The job was cancelled.";
    return `The job failed (${m.outcome.code}).`;
  }
  if (m.cancelling) return "Cancelling…";
  const stage = STAGE_NAMES[m.stage] || m.stage;
  if (m.stage === "content" && m.titles.length) {
    const written = [...m.sections.values()].filter((p) => p.final).length;
    return `${stage}: ${written} of ${m.titles.length} written.`;
  }
  return `${stage}.`;
}

// The server's own words for the stage when it gave some, else our name for it.
function stageLine(m) {
  const stage = STAGE_NAMES[m.stage] || m.stage;
  if (m.outcome) return m.outcome.kind === "done" ? stage : `${stage}: stopped`;
  if (m.message) return m.message;
  return m.stage === "queued" && m.status === "running" ? "Starting" : stage;
}

function connectionLabel(m) {
  if (m.outcome) return "";
  const labels = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    offline: "offline",
  };
  return labels[m.connection] || "";
}

// A part is written, still coming, not begun, or cut short by the job's end.
function partState(m, final, started) {
  if (final) return "written";
  if (m.outcome) return "stopped";
  return started ? "writing" : "waiting";
}

function renderOutline(m) {
  const items = ui.outline.children;
  while (items.length > m.titles.length) ui.outline.lastElementChild.remove();
  m.titles.forEach((title, index) => {
    let li = items[index];
    if (!li) {
      li = document.createElement("li");
      li.append(document.createElement("span"), document.createElement("span"));
      li.firstChild.className = "outline-title";
      li.lastChild.className = "badge";
      ui.outline.append(li);
    }
    const part = m.sections.get(index);
    const state = partState(m, part && part.final, Boolean(part && part.text));
    li.className = "outline-item";
    li.dataset.state = state;
    setText(li.firstChild, title);
    setText(li.lastChild, state);
  });
  ui.outlinePanel.hidden = m.titles.length === 0;
}

function sectionNode(index) {
  let node = sectionNodes.get(index);
  if (node) return node;
  const root = document.createElement("article");
  root.className = "card section";
  root.dataset.index = String(index);
  const head = document.createElement("h3");
  const title = document.createElement("span");
  title.className = "section-title";
  const state = document.createElement("span");
  state.className = "badge";
  head.append(title, state);
  const body = document.createElement("div");
  body.className = "section-body";
  root.append(head, body);
  node = { root, title, state, body };
  // Keep the cards in index order whatever order the sections finish in.
  const after = [...sectionNodes.keys()].filter((i) => i > index).sort((a, b) => a - b)[0];
  ui.sections.insertBefore(root, after === undefined ? null : sectionNodes.get(after).root);
  sectionNodes.set(index, node);
  return node;
}

function renderSections(m) {
  for (const [index, part] of m.sections) {
    if (!part.text && !part.final) continue;
    const node = sectionNode(index);
    const title = part.title || m.titles[index] || `Section ${index + 1}`;
    setText(node.title, title);
    const state = partState(m, part.final, true);
    setText(node.state, state === "writing" ? "writing…" : state);
    node.root.dataset.state = state;
    setText(node.body, part.text);
  }
  ui.sectionsPanel.hidden = sectionNodes.size === 0;
}

function render() {
  const m = model;
  ui.job.hidden = !m;
  if (!m) return;

  setText(ui.jobTopic, m.topic);
  setText(ui.jobId, m.id);
  setText(ui.connection, connectionLabel(m));
  ui.connection.dataset.state = m.connection;

  ui.progress.value = m.progress;
  setText(ui.progressValue, `${m.progress}%`);
  setText(ui.stage, stageLine(m));
  setText(ui.status, statusLine(m));

  const outcome = m.outcome ? m.outcome.kind : "";
  ui.cancel.hidden = Boolean(outcome);
  ui.cancel.disabled = m.cancelling;
  ui.error.hidden = outcome !== "error";
  ui.cancelled.hidden = outcome !== "cancelled";
  if (outcome === "error") {
    setText(ui.errorCode, m.outcome.code);
    setText(ui.errorMessage, m.outcome.message);
  }
  if (outcome === "cancelled") setText(ui.cancelledMessage, m.outcome.message);
  ui.job.dataset.outcome = outcome || "running";

  const usage = usageText(m.usage);
  ui.usage.hidden = !usage;
  setText(ui.usage, usage);

  renderOutline(m);
  renderSections(m);

  ui.articlePanel.hidden = !m.article && !m.articleFinal;
  const articleState = partState(m, m.articleFinal, true);
  setText(ui.articleState, { writing: "(styling…)", stopped: "(stopped)" }[articleState] || "");
  article.show(m.article, m.articleFinal, m.topic);
  ui.articlePanel.dataset.state = articleState;
}

// ---- user actions ----

function showFormError(error) {
  ui.formError.hidden = !error;
  const text = error ? `${error.message || "Something went wrong."} (${error.code})` : "";
  setText(ui.formError, text);
}

async function submitTopic(event) {
  event.preventDefault();
  const topic = ui.topic.value.trim();
  if (!topic) {
    showFormError({ code: "invalid_topic", message: "Please enter a topic." });
    ui.topic.focus();
    return;
  }
  showFormError(null);
  ui.submit.disabled = true;
  const { res, body } = await callApi("POST", "/api/jobs", { topic });
  ui.submit.disabled = false;
  if (!res || !res.ok || !body || !body.id) {
    showFormError(errorOf(res, body));
    return;
  }
  history.replaceState(null, "", `#job=${encodeURIComponent(body.id)}`);
  attach(body);
  recent.load();
}

async function cancelJob() {
  if (!model || model.outcome) return;
  const id = model.id;
  model.cancelling = true;
  render();
  const { res, body } = await callApi("DELETE", jobPath(id));
  if (!model || model.id !== id) return;
  if (res && res.ok && body && !model.outcome && applySnapshot(body)) closeStream();
  // A 409 means it ended first; its terminal event is on the stream. Else let the user retry.
  if (!res || (!res.ok && res.status !== 409)) model.cancelling = false;
  render();
  // The Cancel button is gone now; keep the keyboard where the outcome is told.
  if (model.outcome && model.outcome.kind === "cancelled") ui.cancelled.focus();
  recent.load();
}

function jobFromHash() {
  const match = /^#job=(.+)$/.exec(location.hash);
  if (!match) return null;
  try {
    const id = decodeURIComponent(match[1]);
    return JOB_ID.test(id) ? id : null;
  } catch {
    return null; // a malformed %-escape
  }
}

// Re-attach to the job named in the URL, so a reload keeps watching it.
async function resume() {
  const id = jobFromHash();
  if (!id || (model && model.id === id)) return;
  const { res, body } = await callApi("GET", jobPath(id));
  if (res && res.status === 401) return; // asked for a token; it resumes once given
  if (!res || !res.ok || !body || !body.id) {
    const error = errorOf(res, body);
    showFormError(res && res.status === 404 ? { ...error, message: GONE } : error);
    if (res) history.replaceState(null, "", location.pathname + location.search);
    return;
  }
  attach(body);
}

// ---- the access token, when the service asks for one ----

function askForToken(hadToken) {
  if (hadToken) setToken("");
  ui.tokenError.hidden = !hadToken;
  setText(ui.tokenError, hadToken ? "That token was refused; please enter a valid one." : "");
  if (!ui.tokenPanel.hidden) return;
  ui.tokenPanel.hidden = false;
  ui.token.focus();
}

function useToken(event) {
  event.preventDefault();
  const value = ui.token.value.trim();
  if (!value) return;
  setToken(value);
  ui.token.value = "";
  ui.tokenPanel.hidden = true;
  ui.tokenError.hidden = true;
  ui.topic.focus();
  start();
}

// Load what the page shows from the service; again once a token is given.
function start() {
  recent.load();
  if (model && !model.outcome && !source) {
    model.refusals = 0;
    openStream();
  } else {
    resume();
  }
}

whenUnauthorized(askForToken);
ui.tokenForm.addEventListener("submit", useToken);
ui.form.addEventListener("submit", submitTopic);
ui.cancel.addEventListener("click", cancelJob);
window.addEventListener("hashchange", resume);
start();
