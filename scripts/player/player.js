// The wanx-mcp inline player (MCP Apps view), bundled into wanx_mcp/player/player.html by scripts/build_player.mjs.
//
// The host hands it the result of generate_and_wait or get_task (a Task). While the task runs it asks the server
// through the host (get_task with a short wait) and shows status and elapsed time; once the video is saved it reads
// it through the server (resource wanx://tasks/{task_id}/video, so local files and expired links both work) and
// plays it, with the prompt, actual_prompt, model, resolution, duration and cost.
import { App } from "@modelcontextprotocol/ext-apps";

const FINAL = new Set(["SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]);
const POLL_WAIT_SECONDS = 5;
const $ = (id) => document.getElementById(id);

const app = new App({ name: "wanx-player", version: "1.0.0" }, {}, { autoResize: true });
let shown = null; // task_id whose video is loaded or loading
let following = null; // task_id being polled
let last = null; // the task shown

function setText(id, value) {
  const row = $(id);
  row.hidden = value === undefined || value === null || value === "";
  row.querySelector("dd").textContent = row.hidden ? "" : String(value);
}

function elapsed(task) {
  const start = Date.parse(task.created_at ?? "");
  const end = task.finished_at ? Date.parse(task.finished_at) : Date.now();
  return Number.isFinite(start) ? Math.max(0, Math.round((end - start) / 1000)) : null;
}

function render(task) {
  last = task;
  document.body.dataset.status = task.status;
  const seconds = elapsed(task);
  $("status").textContent = task.status + (seconds === null ? "" : ` · ${seconds} s`);
  $("progress").hidden = FINAL.has(task.status);
  const facts = task.video;
  setText("prompt", task.prompt);
  setText("actual", task.actual_prompt && task.actual_prompt !== task.prompt ? task.actual_prompt : null);
  setText("model", task.model);
  setText("resolution", facts?.width ? `${task.resolution ?? ""} (${facts.width}×${facts.height})`.trim() : task.resolution);
  setText("duration", task.duration ? `${task.duration} s` : null);
  setText("cost", typeof task.estimated_cost_cny === "number" ? `≈ ${task.estimated_cost_cny.toFixed(2)} CNY` : null);
  const problem = task.error_code ? `${task.error_code}: ${task.error_message ?? ""}` : null;
  $("message").textContent = problem ?? (task.status === "SUCCEEDED" && !task.video_path ? task.hint ?? "" : "");
  $("task").textContent = task.task_id;
}

function fail(text) {
  document.body.dataset.status = "ERROR";
  $("progress").hidden = true;
  $("message").textContent = text;
}

function textOf(result) {
  return (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

function taskOf(result) {
  if (result.isError) throw new Error(textOf(result) || "the tool call failed");
  const task = result.structuredContent;
  if (!task?.task_id) throw new Error("the tool result carries no task");
  return task;
}

async function play(task) {
  if (shown === task.task_id) return;
  shown = task.task_id;
  const video = $("video");
  try {
    const read = await app.readServerResource({ uri: `wanx://tasks/${task.task_id}/video` });
    const content = read.contents?.[0];
    if (!content || !("blob" in content)) throw new Error("the video resource returned no data");
    const bytes = Uint8Array.from(atob(content.blob), (c) => c.charCodeAt(0));
    video.src = URL.createObjectURL(new Blob([bytes], { type: content.mimeType || "video/mp4" }));
  } catch (error) {
    if (!task.video_link) {
      shown = null;
      fail(`Could not read the video: ${error.message ?? error}`);
      return;
    }
    video.src = task.video_link; // too large for one resource read: the server's own signed link
  }
  video.hidden = false;
  video.play().catch(() => {}); // muted autoplay; a host may still want a click
}

const saved = (task) => task.status === "SUCCEEDED" && Boolean(task.video_path);
const hopeless = (task) => FINAL.has(task.status) && task.status !== "SUCCEEDED";

async function follow(task) {
  render(task);
  if (saved(task)) return play(task);
  if (hopeless(task) || following === task.task_id) return;
  following = task.task_id;
  try {
    let current = task;
    while (following === task.task_id && !saved(current) && !hopeless(current)) {
      const result = await app.callServerTool({
        name: "get_task",
        arguments: { task_id: task.task_id, wait_seconds: POLL_WAIT_SECONDS, preview: false }, // no image block
      });
      current = taskOf(result);
      render(current);
    }
    if (saved(current)) await play(current);
  } catch (error) {
    fail(`Could not follow the task: ${error.message ?? error}`);
  } finally {
    if (following === task.task_id) following = null;
  }
}

app.ontoolinput = (params) => {
  const args = params.arguments ?? {};
  if (typeof args.prompt === "string") setText("prompt", args.prompt);
  if (typeof args.model === "string") setText("model", args.model);
  $("status").textContent = args.task_id ? "Asking the server…" : "Submitting…";
};

app.ontoolresult = (result) => {
  try {
    follow(taskOf(result));
  } catch (error) {
    fail(error.message ?? String(error));
  }
};

app.ontoolcancelled = () => fail("The tool call was cancelled; the server keeps following the task.");

app.onhostcontextchanged = (context) => {
  if (context.theme) document.documentElement.dataset.theme = context.theme;
};

setInterval(() => last && !FINAL.has(last.status) && render(last), 1000); // keep the elapsed time ticking

await app.connect();
const theme = app.getHostContext()?.theme;
if (theme) document.documentElement.dataset.theme = theme;
