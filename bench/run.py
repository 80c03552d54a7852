"""Run every benchmark once and write bench/RESULTS.md: ``python -m bench`` (or ``python bench/run.py``)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import batch, detection, imageproc, images, overhead
from bench.common import frame, mean, percentile
from wanx_mcp import schedule

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


def detection_section(runs: dict[str, detection.Run]) -> tuple[str, dict[str, bool]]:
    sdk = runs["sdk"]
    wanx = [run for key, run in runs.items() if key != "sdk"]
    sdk_lag, sdk_requests = mean(sdk.lags), mean(sdk.requests)
    rows: list[list[object]] = [["limit (an oracle)", "0.00", "0.00", "1.0", "–", "–"]]
    for run in runs.values():
        lag, requests = mean(run.lags), mean(run.requests)
        rows.append([run.label, f"{lag:.2f}", f"{percentile(run.lags, 0.95):.2f}", f"{requests:.1f}",
                     ratio(lag, sdk_lag), ratio(requests, sdk_requests)])  # fmt: skip
    before, cold, warm = runs["before-cold"], runs["after-cold"], runs["after-warm"]
    targets = {run.label: mean(run.requests) <= sdk_requests / 2 and mean(run.lags) <= sdk_lag for run in (cold, warm)}
    by_job: dict[str, list[int]] = {}
    for index, job in enumerate(sdk.jobs):
        by_job.setdefault(job.label, []).append(index)
    detail = []
    for label, indices in by_job.items():
        typical = sdk.jobs[indices[0]].typical_seconds

        def figures(run: detection.Run, indices: list[int] = indices) -> str:
            lag = mean([run.lags[i] for i in indices])
            return f"{lag:.2f} s / {mean([run.requests[i] for i in indices]):.1f}"

        detail.append([label, len(indices), f"{typical:.0f}", figures(sdk), figures(before), figures(cold),
                       figures(warm)])  # fmt: skip
    expected = mean([detection.sdk_schedule_requests(seconds) for seconds in sdk.durations])
    same = max(abs(a - b) for run in wanx for a, b in zip(run.durations, sdk.durations, strict=True))
    text = f"""## 1. Detection lag and status requests

{len(sdk.jobs)} tasks submitted one after another and then waited for, all running at once (the running
limits are raised for this part only). Lag: from the simulator's exact `SUCCEEDED` instant to the moment the
caller's wait returned, in simulated seconds. Requests: `GET /tasks/{{id}}` per task, counted by the simulator.
Every run saw the same {len(sdk.jobs)} generation times (same seed, same order; largest difference
{same:.3f} s).

{table(["client", "mean lag (s)", "p95 lag (s)", "status requests / task", "lag vs SDK", "requests vs SDK"], rows)}

Target (wanx-mcp, after): at most half the SDK's requests ({sdk_requests / 2:.1f}) at a mean lag of at most the
SDK's ({sdk_lag:.2f} s): cold journal {verdict(targets[cold.label])}, warm journal {verdict(targets[warm.label])}.
The SDK made {sdk_requests:.1f} requests per task where its documented schedule predicts {expected:.1f} for these
durations (its real gaps are a little longer: each sleep comes after a request).

Per kind of task (mean lag / status requests per task):

{table(["task", "n", "typical s", "SDK", "wanx-mcp before, cold", "after, cold", "after, warm"], detail)}
"""
    return text, {f"(1) {label}": ok for label, ok in targets.items()}


def batch_section(batches: list[batch.Batch]) -> tuple[str, dict[str, bool]]:
    limit = batch.limit()
    rows: list[list[object]] = [["limit: ⌈20 / 2⌉ × 60 s", 20, f"{limit:.0f}", "1.00×", 0, 0, "–"]]
    for b in batches:
        makespan = "–" if b.makespan is None else f"{b.makespan:.0f}"
        share = "–" if b.makespan is None else ratio(b.makespan, limit)
        rows.append([b.label, b.delivered, makespan, share, b.upstream_429, b.surfaced_429,
                     f"{b.status_requests / batch.TASKS:.1f}"])  # fmt: skip
    header = ["client", "results", "makespan (s)", "vs limit", "429s upstream", "429s surfaced", "status req. / task"]
    wanx = batches[0]
    ok = wanx.delivered == batch.TASKS and wanx.makespan is not None and wanx.makespan <= 1.05 * limit
    ok = ok and wanx.surfaced_429 == 0
    text = f"""## 2. Batch makespan

{batch.TASKS} × `{batch.MODEL}` {batch.RESOLUTION} submitted at once under the family's real limits (2 submissions
per second, 2 running), no jitter (T = {batch.typical():.0f} s). Makespan: first submission to the last result
reaching the caller, simulated seconds.

{table(header, rows)}

Target: ≤ 1.05 × the limit with no 429 surfaced: {verdict(ok)}.
"""
    return text, {"(2) batch makespan": ok}


def overhead_section(servers: list[overhead.Server]) -> tuple[str, dict[str, bool]]:
    bare, wanx = servers
    rows = []
    for server in servers:
        rows.append([server.label, f"{server.start:.0f}", f"{overhead.p50(server.calls):.3f}",
                     f"{overhead.p99(server.calls):.3f}", f"{overhead.p50(server.sdk_calls):.3f}",
                     f"{overhead.p99(server.sdk_calls):.3f}"])  # fmt: skip
    start = wanx.start / bare.start
    p50 = overhead.p50(wanx.calls) / overhead.p50(bare.calls)
    p99 = overhead.p99(wanx.calls) / overhead.p99(bare.calls)
    sdk50 = overhead.p50(wanx.sdk_calls) / overhead.p50(bare.sdk_calls)
    sdk99 = overhead.p99(wanx.sdk_calls) / overhead.p99(bare.sdk_calls)
    rows.append(["ratio", f"{start:.2f}×", f"{p50:.2f}×", f"{p99:.2f}×", f"{sdk50:.2f}×", f"{sdk99:.2f}×"])
    calls_ok = max(p50, p99) <= 1.5
    client_ok = max(sdk50, sdk99) <= 1.5
    text = f"""## 3. Server overhead (stdio)

Both servers spawned as `python -m …` with this interpreter. Cold start: spawn to the `initialize` response,
median of {overhead.STARTS} alternating starts. Calls: {overhead.CALLS} `tools/call` each after
{overhead.WARMUP_CALLS} warm-up calls, in alternating blocks of {overhead.BLOCK}, first through a raw
newline-delimited JSON-RPC client (the server's own cost), then {overhead.SDK_CALLS} through the MCP SDK's
`Client`, which also validates each result against the tool's output schema. Milliseconds.

{table(["server", "cold start", "p50 (raw)", "p99 (raw)", "p50 (mcp.Client)", "p99 (mcp.Client)"], rows)}

Targets: `get_task` latency ≤ 1.5 × the bare echo, server (raw client): {verdict(calls_ok)}, as seen through
`mcp.Client`: {verdict(client_ok)}; cold start ≤ 1.3 ×: {verdict(start <= 1.3)}.
"""
    return text, {
        "(3) get_task p50/p99, server (raw JSON-RPC client)": calls_ok,
        "(3) get_task p50/p99 through mcp.Client (adds the client's output-schema validation)": client_ok,
        "(3) cold start": start <= 1.3,
    }


def images_section(results: list[images.ImageResult]) -> tuple[str, dict[str, bool]]:
    rows = []
    ok = True
    for r in results:
        rows.append([r.label, f"{r.size / 1e6:.2f} MB", f"{r.first_ms:.0f}", f"{r.median_ms:.0f}",
                     f"{r.peak_rss / 1e6:.1f} MB ({r.peak_rss / r.size:.2f}×)",
                     f"{r.peak_traced / 1e6:.1f} MB ({r.peak_traced / r.size:.2f}×)"])  # fmt: skip
        ok = ok and max(r.first_ms, r.median_ms) <= 100 and r.peak_rss <= 3 * r.size
    text = f"""## 4. Large images

`wanx_mcp.images.prepare_image` on a file of random pixels (the least compressible content) just under the
10 MiB limit of the 2.1/2.2 models: read, identify, integrity check, base64 data URI. Each in a fresh process:
the first call, then the median of {imageproc.RUNS} more; peak memory as the rise of the resident set's
high-water mark over the first call (VmHWM), and tracemalloc's peak for Python allocations.

{table(["image", "file", "first call (ms)", "median (ms)", "peak resident", "peak Python"], rows)}

Targets: ≤ 100 ms and ≤ 3 × the file size: {verdict(ok)}.
"""
    return text, {"(4) large images": ok}


def analysis(runs: dict[str, detection.Run], batches: list[batch.Batch], servers: list[overhead.Server],
             pictures: list[images.ImageResult]) -> str:  # fmt: skip
    sdk, before_cold, before_warm = runs["sdk"], runs["before-cold"], runs["before-warm"]
    old_clock_cold, old_clock_warm = runs["old-clock-cold"], runs["old-clock-warm"]
    after_cold, after_warm = runs["after-cold"], runs["after-warm"]
    sdk_lag, sdk_req = mean(sdk.lags), mean(sdk.requests)

    def figures(run: detection.Run) -> str:
        return f"{mean(run.lags):.2f} s mean lag with {mean(run.requests) / sdk_req:.0%} of the SDK's requests"

    wanx_batch, naive, retry = batches
    refresh = wanx_batch.status_requests / batch.TASKS
    wanx_makespan = wanx_batch.makespan or math.nan
    watched = (wanx_batch.watcher_requests or 0) / batch.TASKS
    bare, wanx = servers
    return f"""## Analysis

**Detection (1).** Before this work wanx-mcp spent few requests but answered late: {figures(before_cold)} (cold)
and {figures(before_warm)} (warm), against the SDK's {sdk_lag:.2f} s. The old schedule checked the window
(estimate ± 2 spreads) every half spread, capped at 15 s: gaps of a few seconds for a one-minute task but 15 s
for anything over about three minutes, whose lag then averaged about 7 s (per-kind table).
`wanx_mcp/schedule.py` now checks a likely window of
± √3 spreads (the whole range of an evenly spread duration) with gaps that shrink with the time left in it,
`√(2 · {schedule.REQUEST_COST} s · time left)`: the spacing that minimises lag plus {schedule.REQUEST_COST} s per
request when the end is equally likely anywhere in the window. And the watcher (`wanx_mcp/watcher.py`) used
to restart a task's clock when it first *saw* it RUNNING, i.e. at its first poll, up to `WANX_POLL_INTERVAL`
after the real start; now it starts the clock at creation plus DashScope's own `scheduled_time −
submit_time`. The new schedule with the old clock gives {figures(old_clock_cold)} (cold) but
{figures(old_clock_warm)} (warm): with a learned, accurate estimate, a window shifted by one poll misses the
early ends; with the catalog's wide cold prior the shift happens to skip the window's empty early part. After
both changes: {figures(after_cold)} (cold), {figures(after_warm)} (warm).
Gaps grow with the square root of the window, so short tasks are checked more densely than by the SDK and
long ones less densely (per-kind table): wanx-mcp spends its lag on the few long tasks, where a second or two
matters least. p95 lag: SDK {percentile(sdk.lags, 0.95):.1f} s, wanx-mcp {percentile(after_cold.lags, 0.95):.1f} s
cold and {percentile(after_warm.lags, 0.95):.1f} s warm. Before the window `WANX_POLL_INTERVAL` (at most 15 s
between checks) costs about one request per 15 s, most of wanx-mcp's requests on long tasks. The limit, 1
request and 0 s, is out of reach of any poller; a push or long-poll API would be needed.

**Batch (2).** wanx-mcp queues locally and submits as slots free up, so every hand-over costs one detection
lag plus one create: {wanx_makespan:.0f} s for 20 results, {wanx_makespan / batch.limit():.3f} × the limit, with no
429 anywhere. Of its {refresh:.1f} status requests per task, {watched:.1f} are the watcher's; the rest are the rate
limiter's refresh of the slot holders every 10 s while a create waits (`wanx_mcp/ratelimit.py`, `stale_after`),
which duplicates the watcher's polling of the same tasks: leaving that to the watcher would save them.
The SDK has no client-side
limiting: submitted naively, {naive.surfaced_429} of 20 creates come back as 429 and only {naive.delivered}
videos are made. With a hand-written retry loop it gets all 20 queued upstream ({retry.upstream_429} 429s on
the way) and DashScope starts each queued task the moment a slot frees, so its makespan is
{(retry.makespan or math.nan) / batch.limit():.3f} × the limit, at {retry.status_requests / batch.TASKS:.0f} status
requests per task (every task polled every 5 s from submission, queue time included). Whether the real
DashScope queues over-limit tasks or refuses them is unverified (see shared/dashscope-wan-i2v.md).

**Server (3).** Answering `get_task` from the journal costs little more than echoing a string
({overhead.p50(wanx.calls):.3f} vs {overhead.p50(bare.calls):.3f} ms p50 over the raw client): both are dominated
by the MCP SDK's own request handling; the journal read and the Task's serialisation take about 0.1 ms.
Through `mcp.Client` the gap widens
({overhead.p50(wanx.sdk_calls):.2f} vs {overhead.p50(bare.sdk_calls):.2f} ms p50) because the *client* validates
the Task result against its 24-field output schema with jsonschema (found with cProfile: about half of the
client's time per call); that is the price of structured output, paid by the caller. Pydantic writes each
optional field as `anyOf: [{{type: X}}, {{type: null}}]`; written as `type: [X, "null"]` the same schema
validates in about 130 instead of 340 µs per Task (jsonschema, this machine). Cold start is
{wanx.start - bare.start:.0f} ms slower than the bare server. Measured separately (`python -X importtime`, timers
around startup): about 70 ms of imports the bare server does not need (rich for the CLI, httpx, Pillow,
sqlite3), about 55 ms in `Wanx.open`, nearly all of it two `httpx.AsyncClient`s each loading the CA bundle into
an SSL context (one shared context, or a lazily made download client, would save about 20 ms), and about 25 ms
in `build_server` generating the six tools' schemas.

**Images (4).** With cProfile, of about 35 ms for the PNG: 5 ms reading the file, 2 ms checking chunk CRCs
(`verify`, nothing decompressed), and about 25 ms producing the base64 text (encoding, copying the pieces into
one buffer, decoding it into a `str`); a JPEG is not decoded at all. Peak memory is the base64 twice over (the
buffer and the final string, 1.33 × the file each, the raw bytes already freed) plus allocator slack:
{max(p.peak_rss / p.size for p in pictures):.2f} × the file at most, under the 3 × target.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                        help=f"simulated seconds per real second (default {DEFAULT_SPEED:g})")  # fmt: skip
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wanx-bench-") as folder:
        work = Path(folder)
        image, image_uri = frame(work)
        log("(1) detection lag and status requests")
        runs = detection.run_all(args.speed, work, image, image_uri, log)
        log("(2) batch makespan")
        batches = batch.run_all(args.speed, work, image, image_uri, log)
        log("(3) server overhead")
        servers = overhead.run_all(work, image, log)
        log("(4) large images")
        pictures = images.run_all(work, log)
    elapsed = time.monotonic() - started
    sections = [detection_section(runs), batch_section(batches), overhead_section(servers),
                images_section(pictures)]  # fmt: skip
    targets = {name: ok for _, found in sections for name, ok in found.items()}
    command = "python -m bench" + (f" --speed {args.speed:g}" if args.speed != DEFAULT_SPEED else "")
    summary = table(["target", "result"], [[name, verdict(ok)] for name, ok in targets.items()])
    report = f"""# wanx-mcp benchmarks

Produced by one run of `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} minutes:
{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, mcp {version("mcp")},
dashscope {version("dashscope")} (the official SDK), simulator speed {args.speed:g}.

## Reproduce

```
pip install -e ".[bench]"
python -m bench            # or: python bench/run.py; --speed changes the time compression
```

It runs offline against wanx-mcp's DashScope simulator and rewrites this file.

## Method

- **One time scale.** Each part starts its own simulator process (`bench/simproc.py`) with realistic
  per-model generation times (the catalog's typical seconds, ± 20 % jitter) run {args.speed:g} × faster. All
  times below are simulated seconds unless marked ms. Both clients are put on the same scale:
  - the official SDK (`VideoSynthesis.async_call` + `wait`, `DASHSCOPE_HTTP_BASE_URL` at the simulator, key
    `sk-simulator`) runs unmodified except that its wait loop's `time.sleep` (in `dashscope.client.base_api`)
    sleeps 1/{args.speed:g} of what it asks: its 1, 1, 2, 2, 2, 4, 4, 4, 5, 5… s schedule, compressed;
  - wanx-mcp runs with `WANX_POLL_INTERVAL` = 15 / {args.speed:g} s, the schedule's fixed one-second floor and its
    request cost divided by {args.speed:g} (`time_scale` of `wanx_mcp.schedule`), and the client's retry backoff
    and the rate limiter's refresh and hold times divided likewise (`bench/common.py: open_wanx`). The
    simulator's and the limiter's one-second submission windows are not compressed: they count real requests.
- **At the caller.** wanx-mcp is driven through its library API (`Wanx.create`, `Wanx.wait`), the SDK through
  its own calls, one thread per task; downloads are off in (1) and (2), so both deliver the video URL.
- **Cold and warm.** Cold: an empty journal, so wanx-mcp starts from the catalog's typical time. Warm: the
  journal left by an earlier run of the same mix against a differently seeded simulator, as a user has after
  a few tasks of each kind.
- **Before / after.** "before" is the scheduling wanx-mcp had when this benchmark was written, replayed in the
  same run: the old `schedule.py` (kept in `bench/baseline.py`, its one-second floor scaled like the new one)
  and the old watcher rule that restarted a task's clock when RUNNING was first seen; "new schedule + old start
  clock" separates the two changes.

## Targets

{summary}

{"".join(text + chr(10) for text, _ in sections)}
{analysis(runs, batches, servers, pictures)}"""
    args.output.write_text(report)
    log(f"wrote {args.output} in {elapsed / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
