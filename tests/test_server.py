"""The MCP server through the SDK's in-memory Client, against the simulator over loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from support import settings_for

from wanx_mcp.catalog import get_model
from wanx_mcp.errors import InvalidInput
from wanx_mcp.ratelimit import RateLimiter
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx

pytestmark = pytest.mark.anyio

TOOLS = {"create_video_task", "get_task", "generate_and_wait", "cancel_task", "list_tasks", "list_models"}


@pytest.fixture
async def wanx(simulator: Any, tmp_path: Path) -> AsyncIterator[Wanx]:
    async with Wanx.open(settings_for(simulator, tmp_path)) as service:
        yield service


@pytest.fixture
async def client(wanx: Wanx) -> AsyncIterator[Client]:
    async with Client(build_server(wanx)) as session:
        yield session


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def mp4_ok(path: str | None) -> bool:
    return path is not None and Path(path).is_file() and Path(path).read_bytes()[4:8] == b"ftyp"


async def test_tools_are_described_with_schemas_and_honest_annotations(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and tool.title and tool.output_schema, tool.name
    generate = tools["generate_and_wait"]
    properties = generate.input_schema["properties"]
    assert generate.input_schema["required"] == ["image"]
    assert {"image", "prompt", "model", "resolution", "duration", "fit_image", "wait_seconds"} <= set(properties)
    assert "wan2.2-i2v-flash" in properties["model"]["description"]
    assert properties["model"]["default"] == "wan2.2-i2v-flash"
    assert properties["wait_seconds"]["default"] == 20.0
    assert tools["get_task"].annotations.read_only_hint is True
    assert tools["list_models"].annotations.read_only_hint is True
    assert tools["create_video_task"].annotations.idempotent_hint is False
    assert tools["cancel_task"].annotations.destructive_hint is True
    assert {"task_id", "status", "video_path", "actual_prompt", "hint"} <= set(
        tools["get_task"].output_schema["properties"]
    )


async def test_list_models_is_structured(client: Client) -> None:
    result = await client.call_tool("list_models", {})
    models = {m["name"]: m for m in result.structured_content["models"]}
    assert "wan2.2-i2v-flash" in models and models["wan2.2-i2v-flash"]["recommended"]
    assert models["wanx2.1-i2v-turbo"]["durations"] == [3, 4, 5]
    assert models["wan2.2-i2v-plus"]["price_cny_per_second"]["1080P"] == 0.7


async def test_generate_and_wait_reports_progress_and_saves_the_video(
    client: Client, image: Path, simulator: Any
) -> None:
    updates: list[tuple[float, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        updates.append((done, message))

    result = await client.call_tool(
        "generate_and_wait",
        {"image": str(image), "prompt": "a calm lake, slow push-in", "resolution": "480P"},
        progress_callback=progress,
    )
    assert not result.is_error, text_of(result)
    task = result.structured_content
    assert task["status"] == "SUCCEEDED"
    assert mp4_ok(task["video_path"])
    assert task["actual_prompt"] and task["orig_prompt"] == "a calm lake, slow push-in"
    assert task["usage"]["duration"] == 5 and task["estimated_cost_cny"] == 0.5
    assert task["video_url"].startswith(simulator.root_url) and task["video_url_expires_at"]
    assert "saved at" in task["hint"]
    assert updates and all(b[0] > a[0] for a, b in pairwise(updates))
    assert any("PENDING" in (m or "") or "RUNNING" in (m or "") for _, m in updates)


async def test_create_journals_before_returning_and_get_task_waits(
    client: Client, wanx: Wanx, image: Path
) -> None:
    created = await client.call_tool("create_video_task", {"image": str(image), "prompt": "waves"})
    task = created.structured_content
    assert task["status"] == "PENDING" and task["model"] == "wan2.2-i2v-flash" and task["resolution"] == "720P"
    journaled = await wanx.store.get(task["task_id"])
    assert journaled is not None and journaled.image and "base64" not in journaled.image
    assert "get_task" in task["hint"]
    done = await client.call_tool("get_task", {"task_id": task["task_id"], "wait_seconds": 20})
    assert done.structured_content["status"] == "SUCCEEDED"
    assert mp4_ok(done.structured_content["video_path"])
    listed = await client.call_tool("list_tasks", {"status": "SUCCEEDED"})
    assert [t["task_id"] for t in listed.structured_content["tasks"]] == [task["task_id"]]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"resolution": "4K"}, "InvalidInput: resolution='4K'"),
        ({"model": "wan9-i2v"}, "InvalidInput: model='wan9-i2v'"),
        ({"duration": 10}, "InvalidInput: duration=10"),
        ({"prompt": "x" * 801}, "InvalidInput: prompt="),
        ({"negative_prompt": "x" * 501}, "InvalidInput: negative_prompt="),
        ({"template": "flying"}, "InvalidInput: template='flying'"),
        ({"seed": -1}, "InvalidInput: seed=-1"),
        ({"image": "/etc/passwd"}, "InvalidInput: image="),
        ({"image": "https://example.com/a.gif"}, "InvalidInput: image="),
        ({"wait_seconds": -5}, "InvalidInput: wait_seconds"),
    ],
)
async def test_invalid_arguments_are_tool_errors_and_send_nothing(
    client: Client, image: Path, simulator: Any, arguments: dict[str, Any], expected: str
) -> None:
    before = simulator.state.stats()["creates_received"]
    result = await client.call_tool("generate_and_wait", {"image": str(image), **arguments})
    assert result.is_error
    assert expected in text_of(result)
    assert simulator.state.stats()["creates_received"] == before


async def test_upstream_errors_reach_the_agent_with_their_code(
    client: Client, image: Path, simulator: Any
) -> None:
    simulator.state.faults.add("create", "error", count=10, status=400, code="InvalidParameter")
    result = await client.call_tool("create_video_task", {"image": str(image)})
    assert result.is_error and "InvalidParameter" in text_of(result) and "request_id=" in text_of(result)


async def test_wrong_key_names_the_region_fix(simulator: Any, tmp_path: Path, image: Path) -> None:
    settings = settings_for(simulator, tmp_path, api_key="sk-wrong")
    async with Wanx.open(settings) as service, Client(build_server(service)) as session:
        result = await session.call_tool("create_video_task", {"image": str(image)})
    assert result.is_error and "InvalidApiKey" in text_of(result) and "WANX_REGION=singapore" in text_of(result)


async def test_without_a_key_the_server_starts_and_says_what_to_do(
    simulator: Any, tmp_path: Path, image: Path
) -> None:
    settings = settings_for(simulator, tmp_path, api_key=None)
    async with Wanx.open(settings) as service, Client(build_server(service)) as session:
        assert not (await session.call_tool("list_models", {})).is_error
        result = await session.call_tool("create_video_task", {"image": str(image)})
    assert result.is_error and "MissingApiKey" in text_of(result) and "WANX_SIMULATE=1" in text_of(result)
    assert simulator.state.stats()["requests"] == []


async def test_moderation_failure_comes_back_as_failed_task_with_hint(client: Client, image: Path) -> None:
    result = await client.call_tool(
        "generate_and_wait", {"image": str(image), "prompt": "[simulate:DataInspectionFailed] a cat"}
    )
    task = result.structured_content
    assert task["status"] == "FAILED" and task["error_code"] == "DataInspectionFailed"
    assert "moderation" in task["hint"]


async def test_bounded_wait_returns_the_running_task_with_a_hint(client: Client, image: Path) -> None:
    result = await client.call_tool(
        "generate_and_wait", {"image": str(image), "model": "wan2.2-i2v-plus", "wait_seconds": 0.5}
    )
    assert not result.is_error
    task = result.structured_content
    assert task["status"] in ("PENDING", "RUNNING")
    assert f"get_task(task_id='{task['task_id']}'" in task["hint"]


async def test_cancelled_call_leaves_the_task_watched_and_downloaded(
    client: Client, wanx: Wanx, image: Path
) -> None:
    with anyio.move_on_after(0.5):
        await client.call_tool("generate_and_wait", {"image": str(image), "prompt": "birds"})
    tasks = await wanx.list()
    assert len(tasks) == 1 and not tasks[0].is_final
    final = await wanx.wait(tasks[0].task_id, 20)
    assert final.status == "SUCCEEDED" and mp4_ok(final.video_path)


async def test_cancel_pending_task(client: Client, image: Path, simulator: Any) -> None:
    simulator.state.hold_pending = True
    created = await client.call_tool("create_video_task", {"image": str(image)})
    task_id = created.structured_content["task_id"]
    result = await client.call_tool("cancel_task", {"task_id": task_id})
    assert not result.is_error, text_of(result)
    assert result.structured_content["status"] == "CANCELED"
    again = await client.call_tool("cancel_task", {"task_id": task_id})
    assert again.is_error and "UnsupportedOperation" in text_of(again)


async def test_unknown_task_id_and_malformed_task_id(client: Client, simulator: Any) -> None:
    unknown = await client.call_tool("get_task", {"task_id": "0000aaaa-1111-2222-3333-444455556666"})
    assert unknown.structured_content["status"] == "UNKNOWN"
    before = len(simulator.state.stats()["requests"])
    bad = await client.call_tool("get_task", {"task_id": "../../etc"})
    assert bad.is_error and "InvalidInput: task_id" in text_of(bad)
    assert len(simulator.state.stats()["requests"]) == before


async def test_resources_list_and_read(client: Client, image: Path) -> None:
    done = await client.call_tool("generate_and_wait", {"image": str(image)})
    task_id = done.structured_content["task_id"]
    listed = {str(r.uri) for r in (await client.list_resources()).resources}
    assert {"wanx://models", "wanx://tasks"} <= listed
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert {"wanx://tasks/{task_id}", "wanx://tasks/{task_id}/video"} <= templates
    tasks = (await client.read_resource("wanx://tasks")).contents[0].text
    assert task_id in tasks
    one = (await client.read_resource(f"wanx://tasks/{task_id}")).contents[0]
    assert one.mime_type == "application/json" and '"SUCCEEDED"' in one.text
    video = (await client.read_resource(f"wanx://tasks/{task_id}/video")).contents[0]
    assert video.mime_type == "video/mp4" and video.blob


async def test_restart_finishes_a_task_cut_off_midway(simulator: Any, tmp_path: Path, image: Path) -> None:
    settings = settings_for(simulator, tmp_path)
    async with Wanx.open(settings) as first:
        task = await first.create({"image": str(image), "model": "wan2.2-i2v-plus"})
    async with Wanx.open(settings) as second:
        assert second.watcher.is_following(task.task_id)
        final = await second.wait(task.task_id, 30)
    assert final.status == "SUCCEEDED" and mp4_ok(final.video_path)


async def test_task_changes_are_published_to_resource_listeners(client: Client, image: Path) -> None:
    seen: list[str] = []

    async def collect(subscription: Any) -> None:
        async for event in subscription:
            seen.append(str(getattr(event, "uri", "")))

    async with client.listen(resource_subscriptions=["wanx://tasks"]) as subscription, anyio.create_task_group() as tg:
        tg.start_soon(collect, subscription)
        result = await client.call_tool("generate_and_wait", {"image": str(image)})
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert result.structured_content["status"] == "SUCCEEDED"
    # submitted, finished, downloaded: each change of the task is announced
    assert len(seen) >= 3 and set(seen) == {"wanx://tasks"}


async def test_many_waiting_callers_share_one_poll_loop(
    client: Client, wanx: Wanx, image: Path, simulator: Any
) -> None:
    created = await client.call_tool("create_video_task", {"image": str(image), "model": "wan2.2-i2v-plus"})
    task_id = created.structured_content["task_id"]
    fresh = await client.call_tool("get_task", {"task_id": task_id})
    assert fresh.structured_content["status"] == "PENDING"
    polls = [r for r in simulator.state.stats()["requests"] if r["path"].endswith(task_id)]
    assert polls == []  # a fresh journal record is answered without asking DashScope

    started = anyio.current_time()
    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(client.call_tool, "get_task", {"task_id": task_id, "wait_seconds": 20})
    elapsed = anyio.current_time() - started
    polls = [r for r in simulator.state.stats()["requests"] if r["path"].endswith(task_id)]
    assert len(polls) == wanx.watcher.status_requests
    assert 1 <= len(polls) <= elapsed + 1  # at most one status request per second, not one per caller


async def test_a_queued_create_reads_its_image_only_when_sent(simulator: Any, tmp_path: Path, image: Path) -> None:
    limiter = RateLimiter.with_overrides(running_tasks=1)
    family = get_model("wan2.2-i2v-flash").rate_limit.family
    late = tmp_path / "late.png"
    late.write_bytes(image.read_bytes())
    simulator.state.hold_pending = True
    async with Wanx.open(settings_for(simulator, tmp_path), client_options={"limiter": limiter}) as wanx:
        first = await wanx.create({"image": str(image)})
        outcome: list[BaseException] = []

        async def second() -> None:
            try:
                await wanx.create({"image": str(late)})
            except InvalidInput as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(second)
            with anyio.fail_after(5):
                while await limiter.queued(family) == 0:
                    await anyio.sleep(0.01)
            late.unlink()  # while it waits for the running slot, it holds no copy of the image
            simulator.state.hold_pending = False
            await wanx.wait(first.task_id, 20)
        assert [s.outcome for s in await wanx.store.submissions()] == ["failed", "created"]
    assert outcome and "no such file" in str(outcome[0])
    assert simulator.state.stats()["creates_received"] == 1


async def test_a_create_waiting_for_a_slot_adds_no_status_requests_of_its_own(
    simulator: Any, tmp_path: Path, image: Path
) -> None:
    limiter = RateLimiter.with_overrides(running_tasks=1, stale_after=0.2)  # refresh the slot holder early
    async with Wanx.open(settings_for(simulator, tmp_path), client_options={"limiter": limiter}) as wanx:
        first = await wanx.create({"image": str(image), "model": "wan2.2-i2v-plus"})
        second = await wanx.create({"image": str(image)})  # waits until the first one is seen finished
        await wanx.wait(second.task_id, 20)
        gets = [r for r in simulator.state.stats()["requests"] if r["method"] == "GET" and "/tasks/" in r["path"]]
        assert (await wanx.store.get(first.task_id)).status == "SUCCEEDED"
        assert len(gets) == wanx.watcher.status_requests  # the limiter's refreshes went through the watcher
