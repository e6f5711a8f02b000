// The live page: POST /streams answers with a chunked fragmented mp4 (init segment, then ~40-ms fragments);
// its bytes go into a Media Source Extensions SourceBuffer as they arrive. Every PROGRESS_MS the page tells
// the server how far it has played (the server then generates at most LEAD_SECONDS ahead, so a new prompt
// shows within about that much) and shows the stream's latest block latency and real-time factor.
"use strict";

const LEAD_SECONDS = 3;        // media the server may generate ahead of playback
const PROGRESS_MS = 500;       // progress report and statistics refresh period
const KEEP_SECONDS = 10;       // played media kept in the SourceBuffer (older is removed: memory stays flat)

const $ = (id) => document.getElementById(id);
const video = $("video");
let session = null;            // {id, controller, mediaSource, sourceBuffer, timer, appended, ended}
let lastError = null;

function show(message) { $("message").textContent = message || ""; if (message) lastError = message; }

function once(target, event) {
  return new Promise((resolve) => target.addEventListener(event, resolve, { once: true }));
}

async function start() {
  await stop();
  show("");
  const controller = new AbortController();
  const params = new URLSearchParams(location.search);
  const request = { prompt: $("prompt").value, seed: Number($("seed").value) || 0, lead_seconds: LEAD_SECONDS };
  if (params.get("seconds")) request.seconds = Number(params.get("seconds"));
  let response;
  try {
    response = await fetch("/streams", { method: "POST", body: JSON.stringify(request), signal: controller.signal,
                                         headers: { "Content-Type": "application/json" } });
  } catch (error) { show(`cannot reach the server: ${error}`); return; }
  if (!response.ok) {
    const body = await response.json().catch(() => ({ error: response.statusText }));
    show(`${response.status}: ${body.error}`);
    return;
  }
  const mime = response.headers.get("Content-Type");
  $("codecs").textContent = mime;
  if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
    controller.abort();
    show(`this browser cannot play ${mime} through Media Source Extensions`);
    return;
  }
  const mediaSource = new MediaSource();
  video.src = URL.createObjectURL(mediaSource);
  await once(mediaSource, "sourceopen");
  const sourceBuffer = mediaSource.addSourceBuffer(mime);
  session = { id: response.headers.get("X-Stream-Id"), controller, mediaSource, sourceBuffer,
              timer: setInterval(report, PROGRESS_MS), appended: 0, ended: false };
  setButtons(true);
  await pump(session, response.body.getReader());
}

async function pump(current, reader) {
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      await append(current, value);
      if (current.appended === value.length) video.play().catch((error) => show(`play: ${error}`));
    }
    if (current.mediaSource.readyState === "open") current.mediaSource.endOfStream();
    current.ended = true;
  } catch (error) {
    if (error.name !== "AbortError") show(`stream: ${error}`);
  }
}

async function append(current, bytes) {
  const buffer = current.sourceBuffer;
  if (buffer.updating) await once(buffer, "updateend");
  const played = video.currentTime;
  if (buffer.buffered.length && played - buffer.buffered.start(0) > 2 * KEEP_SECONDS) {
    buffer.remove(0, played - KEEP_SECONDS);
    await once(buffer, "updateend");
  }
  buffer.appendBuffer(bytes);
  await once(buffer, "updateend");
  current.appended += bytes.length;
}

async function report() {
  const current = session;
  if (!current || current.ended) return;
  try {
    const response = await fetch(`/streams/${current.id}/progress`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ played_seconds: video.currentTime }) });
    if (response.ok) showStatus(await response.json());
  } catch (error) { /* the stream ended meanwhile */ }
}

function showStatus(status) {
  $("state").textContent = status.state;
  $("block").textContent = status.blocks;
  $("latency").textContent = status.block_latency_ms === null ? "-" : `${status.block_latency_ms.toFixed(1)} ms`;
  $("rtf").textContent = status.real_time_factor === null ? "-" : status.real_time_factor.toFixed(3);
  $("media").textContent = `${status.media_seconds.toFixed(2)} s / ${video.currentTime.toFixed(2)} s`;
  $("queue").textContent = `${status.queue_depth} of ${status.queue_capacity}`;
  $("switches").textContent = status.prompt_switches.map((s) => s.block).join(", ") || "-";
}

async function changePrompt() {
  if (!session) return;
  const response = await fetch(`/streams/${session.id}/prompt`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: $("prompt").value }) });
  const body = await response.json().catch(() => ({}));
  show(response.ok ? "" : `${response.status}: ${body.error}`);
}

async function stop() {
  const current = session;
  session = null;
  setButtons(false);
  if (!current) return;
  clearInterval(current.timer);
  current.controller.abort();   // the server sees the disconnect, stops generating and frees the slot
  fetch(`/streams/${current.id}`, { method: "DELETE" }).catch(() => {});
  $("state").textContent = "stopped";
}

function setButtons(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  $("apply").disabled = !running;
}

video.addEventListener("error", () => show(`media error ${video.error.code}: ${video.error.message}`));
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("apply").addEventListener("click", changePrompt);

// For scripted checks (the headless-browser test reads this through the page's own JavaScript).
window.omniforcingPlayer = {
  start, stop, changePrompt,
  state: () => ({
    currentTime: video.currentTime, paused: video.paused, readyState: video.readyState,
    mediaError: video.error ? `${video.error.code}: ${video.error.message}` : null, lastError,
    appendedBytes: session ? session.appended : 0, streamId: session ? session.id : null,
    codecs: $("codecs").textContent, latency: $("latency").textContent, realTimeFactor: $("rtf").textContent,
    switches: $("switches").textContent,
    // Chromium's counters of decoded bytes (undefined elsewhere): proof that both tracks are decoded
    audioDecodedBytes: video.webkitAudioDecodedByteCount, videoDecodedBytes: video.webkitVideoDecodedByteCount,
    buffered: Array.from({ length: video.buffered.length },
                         (_, i) => [video.buffered.start(i), video.buffered.end(i)]),
  }),
};
if (new URLSearchParams(location.search).get("autostart") === "1") start();
