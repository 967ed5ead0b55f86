// The page's client of the WebSocket protocol (docs/protocol.md): asks for n!,
// lists this page's jobs, cancels the ones still waiting on request, and
// survives server restarts and page reloads by reconnecting and asking again,
// by task_id, for every result it still waits for.
"use strict";

const SHOWN_DIGITS = 20;          // first and last digits shown of a long result
const RETRY_MIN_MS = 250;         // reconnect delay, doubled up to RETRY_MAX_MS
const RETRY_MAX_MS = 8000;
// Errors that may well not recur: the job is worth asking for again.
const RETRYABLE = new Set(["timeout", "job_failed", "busy", "unavailable", "rate_limited", "unknown_task_id"]);
// States in which a job can be cancelled: it has a task_id and has not ended.
const CANCELLABLE = new Set(["queued", "started"]);
// What the page shows for each outcome of a cancel ("ended" shows the job's own answer).
const CANCELLED_TEXT = {stopped: "cancelled", continues: "cancelled (still computed for others)"};
// sessionStorage keys: they live as long as the tab, across reloads.
const STORED_JOBS = "factorial.waiting";
const STORED_KEY = "factorial.apiKey";

const jobs = new Map();           // ref -> job; "ref" matches every answer to its request
let nextRef = 1;
let socket = null;
let retryMs = RETRY_MIN_MS;

const list = document.getElementById("jobs");
const connectionLabel = document.getElementById("connection");
const apiKey = takeApiKey();

// A page opened as /?api_key=KEY takes the key once, keeps it for this tab
// (reconnects, reloads) and removes it from the address bar, so it is not left
// in the history, in bookmarks or on a shared screen.
function takeApiKey() {
  const address = new URL(location.href);
  const given = address.searchParams.get("api_key");
  if (given === null) return sessionStorage.getItem(STORED_KEY);
  sessionStorage.setItem(STORED_KEY, given);
  address.searchParams.delete("api_key");
  history.replaceState(history.state, "", address.pathname + address.search + address.hash);
  return given;
}

function socketUrl() {
  // The key goes in the query: a browser's WebSocket cannot send headers.
  return location.origin.replace(/^http/, "ws") + "/ws" + (apiKey ? "?api_key=" + encodeURIComponent(apiKey) : "");
}

function setConnection(state, text) {
  connectionLabel.dataset.state = state;
  connectionLabel.textContent = text;
}

function connect() {
  setConnection("connecting", "connecting…");
  const ws = new WebSocket(socketUrl());
  socket = ws;
  ws.onopen = () => {
    retryMs = RETRY_MIN_MS;
    setConnection("open", "connected");
    for (const job of jobs.values()) {
      if (!job.finished) resend(job);
    }
  };
  ws.onmessage = (event) => receive(JSON.parse(event.data));
  ws.onclose = () => {
    if (socket !== ws) return;
    setConnection("closed", "disconnected, reconnecting…");
    // Jitter: after a server restart, its pages do not all come back at once.
    setTimeout(connect, retryMs * (0.5 + Math.random() / 2));
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  };
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message));
    return true;
  }
  return false;  // sent on reconnect by resend()
}

// After a reconnect: a cancel not answered yet is sent again, a job with a
// task_id is looked up, one without is asked again.
function resend(job) {
  if (job.cancel === "asked") send({type: "cancel", task_id: job.taskId, ref: job.ref});
  else if (job.taskId) send({type: "result", task_id: job.taskId, ref: job.ref});
  else send({type: "factorial", number: job.number, ref: job.ref});
}

function ask(number) {
  const job = {number};
  start(job);
  show(job);
  send({type: "factorial", number, ref: job.ref});
}

function show(job) {
  job.node = render(job);
  list.prepend(job.node);
  remember();
}

// The jobs still waited for, kept in sessionStorage so that a reload looks them up again.
function remember() {
  const waiting = [...jobs.values()].filter((job) => !job.finished)
    .map((job) => ({number: job.number, taskId: job.taskId, cancel: job.cancel, askedAt: job.askedAt}));
  try {
    sessionStorage.setItem(STORED_JOBS, JSON.stringify(waiting));
  } catch (err) {
    // Storage full or refused: the page still works, a reload just forgets these jobs.
  }
}

function restore() {
  let waiting = [];
  try {
    waiting = JSON.parse(sessionStorage.getItem(STORED_JOBS) || "[]");
  } catch (err) {
    waiting = [];  // not ours, or damaged: nothing to restore
  }
  // Stored oldest first, as they were asked; each is prepended, so the newest ends on top.
  for (const saved of Array.isArray(waiting) ? waiting : []) {
    if (!Number.isSafeInteger(saved?.number)) continue;
    const job = {number: saved.number};
    start(job);
    const taskId = typeof saved.taskId === "string" ? saved.taskId : null;
    const cancel = taskId && ["asked", "ended"].includes(saved.cancel) ? saved.cancel : null;
    const state = cancel === "asked" ? "cancelling" : taskId ? "looking up" : "sending";
    Object.assign(job, {taskId, cancel, state, askedAt: Number(saved.askedAt) || Date.now()});
    show(job);  // looked up (or asked again) when the socket opens
  }
}

// (Re)start a job: a fresh ref, so a late answer to an earlier try is ignored.
function start(job) {
  if (job.ref) jobs.delete(job.ref);
  // Date.now(), not performance.now(): a reload keeps a job's age.
  Object.assign(job, {ref: "job-" + nextRef++, state: "sending", askedAt: Date.now(), endedAt: null, taskId: null,
                      digits: null, result: null, finished: false, error: null, retryable: false, cancel: null});
  jobs.set(job.ref, job);
}

function retry(job) {
  start(job);
  update(job);
  remember();
  send({type: "factorial", number: job.number, ref: job.ref});
}

// Cancel: withdraw this page's wait; the server stops the job unless someone else waits for it.
function cancel(job) {
  if (!job.taskId || job.finished || job.cancel) return;
  job.cancel = "asked";
  job.state = "cancelling";
  update(job);
  remember();
  send({type: "cancel", task_id: job.taskId, ref: job.ref});  // or on reconnect, by resend()
}

function receive(message) {
  const job = jobs.get(message.ref);
  if (!job || job.finished) return;
  if (message.task_id) job.taskId = message.task_id;
  switch (message.type) {
    case "result":   // acknowledgement
    case "status":
      if (job.cancel !== "asked") job.state = message.status;  // an answer sent before the cancel arrived
      break;
    case "cancelled":
      if (message.job === "ended") {
        // It ended before the cancel: the server sends nothing more unasked, so look its answer up.
        job.cancel = "ended";
        job.state = "ended";
        send({type: "result", task_id: job.taskId, ref: job.ref});
      } else {
        job.cancel = message.job;
        finish(job, "cancelled");
      }
      break;
    case "success":
      // Results above 2^53 - 1 arrive as strings of digits, so String() keeps them exact.
      job.result = String(message.result);
      job.digits = message.digits;
      finish(job, "done");
      break;
    case "error":
      job.error = `${message.code}: ${message.result}`;
      job.retryable = RETRYABLE.has(message.code);
      finish(job, "error");
      break;
  }
  update(job);
  remember();
}

function finish(job, state) {
  job.state = state;
  job.finished = true;
  job.endedAt = Date.now();
}

function render(job) {
  const node = document.createElement("li");
  node.className = "job";
  node.innerHTML = `
    <div class="line"><span class="n"></span><span class="state"></span>
      <span class="elapsed"></span><span class="digits"></span></div>
    <div class="result"></div>
    <div class="actions"><button class="copy" type="button" hidden>Copy</button>
      <button class="download" type="button" hidden>Download</button>
      <button class="retry" type="button" hidden>Retry</button>
      <button class="cancel" type="button" hidden>Cancel</button></div>`;
  node.querySelector(".n").textContent = job.number + "!";
  node.querySelector(".copy").onclick = () => copy(job, node);
  node.querySelector(".download").onclick = () => download(job);
  node.querySelector(".retry").onclick = () => retry(job);
  node.querySelector(".cancel").onclick = () => cancel(job);
  update(job, node);
  return node;
}

function update(job, node = job.node) {
  const shownState = job.state === "finished" ? "done" : job.state;
  node.dataset.state = shownState;
  node.dataset.ref = job.ref;
  node.dataset.taskId = job.taskId ?? "";
  node.querySelector(".state").textContent = shownState === "cancelled" ? CANCELLED_TEXT[job.cancel] : shownState;
  node.querySelector(".elapsed").textContent = elapsed(job);
  const succeeded = job.state === "done" && job.result !== null;
  node.querySelector(".digits").textContent = succeeded ? `${job.digits} digits` : "";
  node.querySelector(".result").textContent = succeeded ? abbreviate(job.result) : (job.error ?? "");
  node.querySelector(".copy").hidden = !succeeded;
  node.querySelector(".download").hidden = !succeeded;
  node.querySelector(".retry").hidden = !(job.state === "error" && job.retryable);
  node.querySelector(".cancel").hidden = !(job.taskId && !job.finished && !job.cancel && CANCELLABLE.has(job.state));
  node.querySelector(".copy").textContent = "Copy";
}

function elapsed(job) {
  const ms = (job.endedAt ?? Date.now()) - job.askedAt;
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function abbreviate(digits) {
  if (digits.length <= 2 * SHOWN_DIGITS + 1) return digits;
  return `${digits.slice(0, SHOWN_DIGITS)}…${digits.slice(-SHOWN_DIGITS)}`;
}

async function copy(job, node) {
  const button = node.querySelector(".copy");
  try {
    await navigator.clipboard.writeText(job.result);
    button.textContent = "Copied";
  } catch (err) {
    // Clipboard access needs a secure context or a permission; download still works.
    button.textContent = "Copy refused";
  }
}

function download(job) {
  const url = URL.createObjectURL(new Blob([job.result + "\n"], {type: "text/plain"}));
  const link = document.createElement("a");
  link.href = url;
  link.download = `factorial-${job.number}.txt`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Elapsed times of jobs still running tick on screen.
setInterval(() => {
  for (const job of jobs.values()) {
    if (!job.finished) job.node.querySelector(".elapsed").textContent = elapsed(job);
  }
}, 100);

document.getElementById("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = document.getElementById("number");
  const number = Number(field.value);
  if (!Number.isSafeInteger(number) || number < 0) return;
  ask(number);
});

restore();
connect();
