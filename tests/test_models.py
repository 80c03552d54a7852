"""Models as data: one catalog entry drives validation, the payload, the tools, the CLI and the README."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from PIL import Image
from support import WANX, isolated_env, settings_for

from wanx_mcp.catalog import I2V_PATH, KF2V_PATH, MODELS, PARAMS, ModelSpec, Param, Rule, model_table, registered, rules
from wanx_mcp.catalog import WAN_21_22 as FAMILY
from wanx_mcp.cli import parser
from wanx_mcp.request import build_request
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_BUDGET_BYTES = 5500
GENERATING = ("create_video_task", "generate_and_wait")


@pytest.fixture
async def wanx(simulator: Any, tmp_path: Path) -> AsyncIterator[Wanx]:
    async with Wanx.open(settings_for(simulator, tmp_path)) as service:
        yield service


@pytest.fixture
async def client(wanx: Wanx) -> AsyncIterator[Client]:
    async with Client(build_server(wanx)) as session:
        yield session


@pytest.fixture
def last_frame(tmp_path: Path) -> Path:
    path = tmp_path / "last.png"
    Image.new("RGB", (640, 480), "#aa6633").save(path)
    return path


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def cli_arguments() -> set[str]:
    """The generation arguments ``wanx-mcp generate`` takes (argparse destinations)."""
    return set(vars(parser().parse_args(["generate", "x.png"]))) - {"command", "run", "is_async", "wait", "json",
                                                                    "simulate"}  # fmt: skip


# -- the tool list an LLM reads ----------------------------------------------------------------------


async def test_tool_list_fits_the_context_budget(client: Client) -> None:
    tools = (await client.list_tools()).tools
    seen = [{"name": t.name, "description": t.description, "inputSchema": t.input_schema} for t in tools]
    size = len(json.dumps(seen, separators=(",", ":")).encode())
    assert size <= CONTEXT_BUDGET_BYTES, f"{size} bytes of tool list"
    for tool in tools:
        assert tool.input_schema["additionalProperties"] is False, tool.name
        assert "\n    " not in (tool.description or ""), f"{tool.name}: indented description"
    generate = next(t for t in tools if t.name == "generate_and_wait")
    properties = generate.input_schema["properties"]
    assert set(PARAMS) <= set(properties)  # every argument kept, last_frame and the 2.5/2.6 ones included
    assert "file://" in properties["image"]["description"] and "data:" in properties["image"]["description"]
    assert "get_task" in generate.description and "never resubmit" in generate.description
    assert "InvalidInput: nothing was sent" in generate.description
    assert properties["resolution"]["enum"] == ["480P", "720P", "1080P"]
    assert "CNY" not in json.dumps(seen)  # prices belong to list_models


async def test_cli_exposes_every_generation_argument_the_tools_have(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        if tool.name in GENERATING:
            assert set(tool.input_schema["properties"]) - {"wait_seconds", "preview"} == cli_arguments()


# -- one entry is enough ----------------------------------------------------------------------------

EXTRA = Param(name="motion_strength", type=int, target="parameters.motion_strength",
              description="How much things move")  # fmt: skip
TEST_MODEL = ModelSpec(
    name="test-i2v-extra", description="A test-only model with a parameter of its own.",
    params=rules(("720P",), "720P", motion_strength=Rule(minimum=1, maximum=10)),
    rate_limit=FAMILY, price_cny_per_second={"720P": 0.1}, typical_seconds=30,
)  # fmt: skip


async def test_a_new_model_and_parameter_show_up_in_the_tools_the_cli_and_the_payload(wanx: Wanx) -> None:
    with registered(TEST_MODEL, params=[EXTRA]):
        async with Client(build_server(wanx)) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            for name in GENERATING:
                assert tools[name].input_schema["properties"]["motion_strength"] == {
                    "description": "How much things move", "type": "integer"}  # fmt: skip
            listed = (await session.call_tool("list_models", {})).structured_content["models"]
            assert listed[-1]["arguments"]["motion_strength"] == {"minimum": 1, "maximum": 10}
        args = parser().parse_args(["generate", "x.png", "--model", "test-i2v-extra", "--motion-strength", "7"])
        assert args.motion_strength == 7 and "motion_strength" in cli_arguments()
        request = build_request({"image": "x.png", "model": "test-i2v-extra", "motion_strength": 7})
        assert request.payload("u")["parameters"]["motion_strength"] == 7
        assert request.estimated_cost_cny == 0.5
        with pytest.raises(Exception, match="motion_strength=11: must be between 1 and 10"):
            build_request({"image": "x.png", "model": "test-i2v-extra", "motion_strength": 11})
        with pytest.raises(Exception, match="does not take motion_strength; models that do: test-i2v-extra"):
            build_request({"image": "x.png", "motion_strength": 7})
    assert "motion_strength" not in PARAMS and TEST_MODEL not in MODELS
    assert "motion_strength" not in cli_arguments()


# -- first and last frame ---------------------------------------------------------------------------


def test_last_frame_picks_the_kf2v_default_and_both_images_go_to_the_kf2v_fields() -> None:
    request = build_request({"image": "a.png", "last_frame": "b.png", "prompt": "the flower opens"})
    assert request.model == "wan2.2-kf2v-flash" and request.spec.endpoint == KF2V_PATH
    assert request.images == {"image": "a.png", "last_frame": "b.png"}
    assert request.payload({"image": "A", "last_frame": "B"}) == {
        "model": "wan2.2-kf2v-flash",
        "input": {"first_frame_url": "A", "last_frame_url": "B", "prompt": "the flower opens"},
        "parameters": {"resolution": "720P", "prompt_extend": True, "watermark": False},
    }
    assert build_request({"image": "a.png"}).spec.endpoint == I2V_PATH
    plus = build_request({"image": "a.png", "model": "wanx2.1-kf2v-plus", "template": "hanfu-1"})
    assert plus.payload({"image": "A"})["input"] == {"first_frame_url": "A", "template": "hanfu-1"}
    assert plus.estimated_cost_cny is None  # unpublished price


BAD_COMBINATIONS: list[tuple[dict[str, Any], str]] = [
        ({"model": "wan2.2-i2v-flash", "last_frame": "LAST"},
         "last_frame=LAST: wan2.2-i2v-flash does not take last_frame; models that do: wan2.2-kf2v-flash, "
         "wanx2.1-kf2v-plus"),
        ({"model": "wanx2.1-i2v-plus", "template": "hanfu-1"},
         "template='hanfu-1': not supported by wanx2.1-i2v-plus; models that take it: wanx2.1-kf2v-plus"),
        ({"model": "wanx2.1-kf2v-plus", "template": "flying"},
         "template='flying': not supported by wanx2.1-kf2v-plus; models that take it: wanx2.1-i2v-plus"),
        ({"model": "wanx2.1-kf2v-plus", "template": "mech1", "last_frame": "LAST"},
         "last_frame=LAST: cannot be combined with template on wanx2.1-kf2v-plus"),
        ({"last_frame": "LAST", "resolution": "4K"}, "resolution='4K': not supported by wan2.2-kf2v-flash"),
        ({"last_frame": "LAST", "duration": 10}, "duration=10: not supported by wan2.2-kf2v-flash; models that"),
        ({"audio_url": "https://example.com/a.mp3"}, "wan2.2-i2v-flash does not take audio_url"),
        ({"model": "wan2.6-i2v", "audio": False}, "wan2.6-i2v does not take audio; models that do: wan2.6-i2v-flash"),
        ({"model": "wan2.6-i2v", "shot_type": "multi", "prompt_extend": False},
         "shot_type='multi': 'multi' needs prompt_extend=true"),
        ({"model": "wan2.2-i2v-plus", "resolution": "720P"}, "resolution='720P': not supported by wan2.2-i2v-plus"),
        ({"negative_promt": "blurry"}, "negative_promt='blurry': unknown argument (valid: image, prompt,"),
        ({"duration": "five"}, "duration='five': Input should be a valid integer"),
        ({"prompt": 42}, "prompt=42: Input should be a valid string"),
        ({"prompt": "a cat\x00 runs"}, "contains the control character U+0000"),
        ({"negative_prompt": "blur \u202eyrrulb"}, "contains the control character U+202E"),
        ({"last_frame": ""}, "last_frame='': must not be empty"),
        ({"last_frame": "/etc/passwd"}, "InvalidInput: last_frame="),
]  # fmt: skip


async def test_bad_combinations_are_refused_locally_and_send_nothing(
    client: Client, image: Path, simulator: Any
) -> None:
    for arguments, expected in BAD_COMBINATIONS:
        given = {k: v.replace("LAST", str(image)) if isinstance(v, str) else v for k, v in arguments.items()}
        wanted = expected.replace("LAST", repr(str(image)))
        for tool in GENERATING:
            result = await client.call_tool(tool, {"image": str(image), **given})
            assert result.is_error and wanted in text_of(result), text_of(result)
            assert "InvalidInput" in text_of(result) and "pydantic" not in text_of(result)
    assert simulator.state.stats()["creates_received"] == 0


OTHER_TOOLS_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("get_task", {"task_id": "0385dc79-5ff8-4d82-bcb6-caa0a4bd3a4e", "wait": 5}, "wait=5: unknown argument"),
    ("get_task", {"task_id": "0385dc79-5ff8-4d82", "wait_seconds": "soon"}, "wait_seconds='soon': Input should"),
    ("list_tasks", {"limit": "many"}, "limit='many': Input should be a valid integer"),
    ("list_models", {"verbose": True}, "verbose=True: unknown argument"),
    ("cancel_task", {}, "task_id=None: is required"),
]


async def test_every_tool_refuses_unknown_and_mistyped_arguments_clearly(client: Client, simulator: Any) -> None:
    for tool, arguments, expected in OTHER_TOOLS_BAD:
        result = await client.call_tool(tool, arguments)
        assert result.is_error and f"InvalidInput: {expected}" in text_of(result), text_of(result)
        assert "pydantic" not in text_of(result)
    assert simulator.state.stats()["status_gets"] == simulator.state.stats()["cancels"] == 0


# -- the README's model table -----------------------------------------------------------------------


def test_readme_model_table_is_the_catalog() -> None:
    table = model_table()
    assert table in (ROOT / "README.md").read_text(), (
        "regenerate the README's table: python -c 'from wanx_mcp.catalog import model_table; print(model_table())'"
    )
    assert all(f"| `{m.name}` |" in table for m in MODELS)
    assert "| `wan2.2-kf2v-flash` | 480P, 720P, 1080P (720P) | 5 | unpublished | `last_frame` |" in table
    assert (
        "| `wan2.6-i2v-flash` | 720P, 1080P (1080P) | 2-15 | unpublished | `audio_url`, `shot_type`, `audio` |" in table
    )
    assert "| `wan2.2-i2v-flash` | 480P, 720P, 1080P (720P) | 5 | 0.1 / 0.2 / 0.48 | — |" in table


# -- end to end against the simulator's own rules -----------------------------------------------------


async def test_a_first_and_last_frame_generation_end_to_end(
    client: Client, wanx: Wanx, image: Path, last_frame: Path, simulator: Any
) -> None:
    result = await client.call_tool(
        "generate_and_wait", {"image": str(image), "last_frame": str(last_frame), "prompt": "the sky darkens"}
    )
    assert not result.is_error, text_of(result)
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and task["model"] == "wan2.2-kf2v-flash" and task["resolution"] == "720P"
    assert task["video_path"] and Path(task["video_path"]).read_bytes()[4:8] == b"ftyp"
    assert task["image"].startswith(f"file {image}") and task["last_frame"].startswith(f"file {last_frame}")
    assert task["estimated_cost_cny"] is None
    stats = simulator.state.stats()
    record = stats["tasks"][task["task_id"]]
    assert record["model"] == "wan2.2-kf2v-flash"
    assert record["input_fields"] == ["first_frame_url", "last_frame_url", "prompt"]
    creates = [r["path"] for r in stats["requests"] if r["method"] == "POST"]
    assert creates == ["/api/v1/services/aigc/image2video/video-synthesis"]
    journaled = await wanx.store.request_of(task["task_id"])
    assert journaled is not None and journaled["last_frame"] == task["last_frame"]
    assert "base64" not in json.dumps(journaled)


async def test_a_wrong_catalog_entry_is_caught_by_the_simulators_own_rules(
    client: Client, image: Path, simulator: Any
) -> None:
    index = next(i for i, m in enumerate(MODELS) if m.name == "wan2.2-i2v-plus")
    right = MODELS[index]  # 480P and 1080P only; the wrong entry adds 720P
    wrong_rule = Rule(choices=("480P", "720P", "1080P"), default="1080P")
    MODELS[index] = right.model_copy(update={"params": right.params | {"resolution": wrong_rule}})
    try:
        arguments = {"image": str(image), "model": "wan2.2-i2v-plus", "resolution": "720P"}
        result = await client.call_tool("create_video_task", arguments)
    finally:
        MODELS[index] = right
    assert result.is_error and "InvalidParameter" in text_of(result) and "resolution" in text_of(result)
    assert simulator.state.stats()["tasks_created"] == 0


def cli_generate(tmp_path: Path, last_frame: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    first = tmp_path / "first.png"
    Image.new("RGB", (640, 480), "#3366aa").save(first)
    command = [*WANX, "generate", str(first), "dusk falls", "--last-frame", str(last_frame), "--simulate", *extra]
    env = isolated_env(tmp_path, WANX_SIMULATOR_SPEED="100")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_cli_makes_a_first_and_last_frame_video(tmp_path: Path, last_frame: Path) -> None:
    done = cli_generate(tmp_path, last_frame, "--json")
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["model"] == "wan2.2-kf2v-flash" and task["status"] == "SUCCEEDED"
    assert task["last_frame"].startswith(f"file {last_frame}")
