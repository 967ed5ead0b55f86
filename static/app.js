// The page's client of the WebSocket protocol (docs/protocol.md): asks for n!,
// lists this page's jobs, and survives server restarts by reconnecting and
// asking again, by task_id, for every result it still waits for.
"use strict";

const SHOWN_DIGITS = 20;          // first and last digits shown of a long result
const RETRY_MIN_MS = 250;         // reconnect delay, doubled up to RETRY_MAX_MS
const RETRY_MAX_MS = 8000;
// Errors that may well not recur: the job is worth asking for again.
const RETRYABLE = new Set(["timeout", "job_failed", "busy", "unavailable", "rate_limited", "unknown_task_id"]);

const jobs = new Map();           // ref -> job; "ref" matches every answer to its request
let nextRef = 1;
let socket = null;
let retryMs = RETRY_MIN_MS;

const list = document.getElementById("jobs");
const connectionLabel = document.getElementById("connection");

function socketUrl() {
  // A page opened as /?api_key=KEY hands its key on: a browser's WebSocket cannot send headers.
  const key = new URLSearchParams(location.search).get("api_key");
  return location.origin.replace(/^http/, "ws") + "/ws" + (key ? "?api_key=" + encodeURIComponent(key) : "");
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

// After a reconnect: a job with a task_id is looked up, one without is asked again.
function resend(job) {
  if (job.taskId) send({type: "result", task_id: job.taskId, ref: job.ref});
  else send({type: "factorial", number: job.number, ref: job.ref});
}

function ask(number) {
  const job = {number};
  start(job);
  job.node = render(job);
  list.prepend(job.node);
  send({type: "factorial", number, ref: job.ref});
}

// (Re)start a job: a fresh ref, so a late answer to an earlier try is ignored.
function start(job) {
  if (job.ref) jobs.delete(job.ref);
  Object.assign(job, {ref: "job-" + nextRef++, state: "sending", askedAt: performance.now(), endedAt: null,
                      taskId: null, digits: null, result: null, finished: false, error: null, retryable: false});
  jobs.set(job.ref, job);
}

function retry(job) {
  start(job);
  update(job);
  send({type: "factorial", number: job.number, ref: job.ref});
}

function receive(message) {
  const job = jobs.get(message.ref);
  if (!job || job.finished) return;
  if (message.task_id) job.taskId = message.task_id;
  switch (message.type) {
    case "result":   // acknowledgement
    case "status":
      job.state = message.status;
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
}

function finish(job, state) {
  job.state = state;
  job.finished = true;
  job.endedAt = performance.now();
}

function render(job) {
  const node = document.createElement("li");
  node.className = "job";
  node.dataset.ref = job.ref;
  node.innerHTML = `
    <div class="line"><span class="n"></span><span class="state"></span>
      <span class="elapsed"></span><span class="digits"></span></div>
    <div class="result"></div>
    <div class="actions"><button class="copy" type="button" hidden>Copy</button>
      <button class="download" type="button" hidden>Download</button>
      <button class="retry" type="button" hidden>Retry</button></div>`;
  node.querySelector(".n").textContent = job.number + "!";
  node.querySelector(".copy").onclick = () => copy(job, node);
  node.querySelector(".download").onclick = () => download(job);
  node.querySelector(".retry").onclick = () => retry(job);
  update(job, node);
  return node;
}

function update(job, node = job.node) {
  const shownState = job.state === "finished" ? "done" : job.state;
  node.dataset.state = shownState;
  node.querySelector(".state").textContent = shownState;
  node.querySelector(".elapsed").textContent = elapsed(job);
  const succeeded = job.state === "done" && job.result !== null;
  node.querySelector(".digits").textContent = succeeded ? `${job.digits} digits` : "";
  node.querySelector(".result").textContent = succeeded ? abbreviate(job.result) : (job.error ?? "");
  node.querySelector(".copy").hidden = !succeeded;
  node.querySelector(".download").hidden = !succeeded;
  node.querySelector(".retry").hidden = !(job.state === "error" && job.retryable);
  node.querySelector(".copy").textContent = "Copy";
}

function elapsed(job) {
  const ms = (job.endedAt ?? performance.now()) - job.askedAt;
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

connect();
