"""The spending guard: ``WANX_BUDGET_CNY`` caps the estimated spend of any rolling 24 hours over the shared store.

Through the MCP client against the simulator: what passes, what is refused (``BudgetExceeded``, nothing sent),
what frees its share (a FAILED task); real CLI processes racing on one journal; the store's check-and-record
racing in one process on two connections; the conservative count of a model whose price is unpublished.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from support import WANX, isolated_env, settings_for, simulator_env

from wanx_mcp.catalog import MODELS, budget_price, get_model
from wanx_mcp.config import load_settings
from wanx_mcp.errors import BudgetExceeded, InvalidInput
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator
from wanx_mcp.store.base import over_budget
from wanx_mcp.store.sqlite import SQLiteStore
from wanx_mcp.tasks import parse_iso, utcnow

pytestmark = pytest.mark.anyio

#: wan2.2-i2v-flash, 720P, 5 s: 0.20 CNY/s x 5 s = 1.0 CNY.
ONE_CNY = {"model": "wan2.2-i2v-flash", "resolution": "720P", "duration": 5}


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture
async def client(simulator: RunningSimulator, tmp_path: Path) -> AsyncIterator[Client]:
    async with Wanx.open(settings_for(simulator, tmp_path, budget_cny=1.5)) as wanx, Client(build_server(wanx)) as c:
        yield c


async def test_a_task_within_the_budget_passes_and_the_next_is_refused_with_nothing_sent(
    client: Client, simulator: RunningSimulator, image: Path
) -> None:
    first = await client.call_tool("create_video_task", {"image": str(image), **ONE_CNY})
    assert not first.is_error, text_of(first)
    assert first.structured_content["estimated_cost_cny"] == 1.0
    models = (await client.call_tool("list_models", {})).structured_content["models"]
    flash = next(m for m in models if m["name"] == "wan2.2-i2v-flash")
    assert flash["price_cny_per_second"]["720P"] * 5 == pytest.approx(1.0)  # the same arithmetic

    second = await client.call_tool("create_video_task", {"image": str(image), **ONE_CNY})
    assert second.is_error
    text = text_of(second)
    assert "BudgetExceeded: " in text and "\n" not in text
    assert "WANX_BUDGET_CNY=1.5" in text and "spent so far: 1 CNY" in text and "about 1 CNY" in text
    frees_at = parse_iso(text.split("room for it frees up at ")[1].rstrip("."))
    assert frees_at is not None and timedelta(hours=23, minutes=59) < frees_at - utcnow() <= timedelta(hours=24)
    assert simulator.state.stats()["creates_received"] == 1  # nothing sent for the refused one

    cheap = await client.call_tool("create_video_task", {"image": str(image), **ONE_CNY, "resolution": "480P"})
    assert not cheap.is_error, text_of(cheap)  # 0.5 CNY still fits: 1.0 + 0.5 <= 1.5
    assert simulator.state.stats()["creates_received"] == 2


async def test_a_task_larger_than_the_whole_budget_says_it_never_fits(
    client: Client, simulator: RunningSimulator, image: Path
) -> None:
    result = await client.call_tool("create_video_task", {"image": str(image), **ONE_CNY, "resolution": "1080P"})
    assert result.is_error and "BudgetExceeded: " in text_of(result)
    assert "does not fit even in an empty window" in text_of(result)
    assert simulator.state.stats()["creates_received"] == 0


async def test_a_failed_task_frees_its_share(client: Client, simulator: RunningSimulator, image: Path) -> None:
    simulator.state.faults.add("create", "task_failed")
    failed = await client.call_tool("generate_and_wait", {"image": str(image), **ONE_CNY, "wait_seconds": 30})
    assert not failed.is_error and failed.structured_content["status"] == "FAILED"
    passed = await client.call_tool("create_video_task", {"image": str(image), **ONE_CNY})
    assert not passed.is_error, text_of(passed)
    assert simulator.state.stats()["creates_received"] == 2


async def test_an_unpublished_price_counts_at_the_highest_published_one_and_the_task_says_so(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    spec = get_model("wan2.2-kf2v-flash")
    assert spec.price("720P", 5) is None
    highest = max(p for m in MODELS if (p := m.price("720P", 5)) is not None)
    assert budget_price(spec, "720P", 5) == (highest, True)
    assert budget_price(get_model("wan2.2-i2v-flash"), "720P", 5) == (1.0, False)
    args = {"image": str(image), "last_frame": str(image), "model": spec.name, "resolution": "720P"}
    async with Wanx.open(settings_for(simulator, tmp_path, budget_cny=highest)) as wanx:
        task = await wanx.create(args)
        assert task.estimated_cost_cny is None  # as list_models shows it: unpublished
        assert any(f"counted as {highest:g} CNY against WANX_BUDGET_CNY" in note for note in task.notes)
        with pytest.raises(BudgetExceeded):
            await wanx.create(args)
    assert simulator.state.stats()["creates_received"] == 1
    unlimited = settings_for(simulator, tmp_path, data_dir=tmp_path / "other")
    async with Wanx.open(unlimited) as wanx:  # no budget: nothing changes
        task = await wanx.create(args)
        assert task.estimated_cost_cny is None and not any("WANX_BUDGET_CNY" in note for note in task.notes)


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_a_bad_budget_is_refused_clearly(value: str) -> None:
    with pytest.raises(InvalidInput, match="WANX_BUDGET_CNY"):
        load_settings({"WANX_BUDGET_CNY": value})
    assert load_settings({"WANX_BUDGET_CNY": " "}).budget_cny is None
    assert load_settings({"WANX_BUDGET_CNY": "2.5"}).budget_cny == 2.5


def test_room_frees_up_when_enough_of_the_oldest_leave_the_window() -> None:
    now = utcnow()
    counted = [(now - timedelta(hours=3), 1.0), (now - timedelta(hours=2), 1.0), (now - timedelta(hours=1), 1.0)]
    assert over_budget(counted, 1.0, 4.0) is None

    def frees_in(cost: float) -> timedelta:
        refusal = over_budget(counted, cost, 4.0)
        assert refusal is not None and refusal.spent == 3.0 and refusal.frees_at is not None
        return parse_iso(refusal.frees_at) - now  # type: ignore[operator]

    assert abs(frees_in(2.0) - timedelta(hours=21)) < timedelta(milliseconds=1)  # once the oldest leaves
    assert abs(frees_in(3.0) - timedelta(hours=22)) < timedelta(milliseconds=1)  # once the two oldest leave
    never = over_budget(counted, 5.0, 4.0)
    assert never is not None and never.frees_at is None


async def test_two_connections_racing_to_reserve_never_both_pass(tmp_path: Path) -> None:
    stores = [SQLiteStore(tmp_path / "journal.sqlite3") for _ in range(2)]
    for store in stores:
        await store.open()
    outcomes: list[str] = []

    async def reserve(store: SQLiteStore) -> None:
        try:
            await store.reserve_submission("wan2.2-i2v-flash", {}, owner="o", estimated_cost_cny=1.0, budget=1.5)
            outcomes.append("passed")
        except BudgetExceeded:
            outcomes.append("refused")

    try:
        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(reserve, stores[n % 2])
        assert sorted(outcomes) == ["passed"] + ["refused"] * 7
        assert len(await stores[0].submissions()) == 1
        assert await stores[1].spend_since(utcnow() - timedelta(hours=24)) == 1.0
    finally:
        for store in stores:
            await store.close()


@pytest.mark.slow
def test_processes_on_one_journal_share_the_budget_and_the_cli_exits_1(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    env = isolated_env(tmp_path, **simulator_env(simulator), WANX_BUDGET_CNY="1.5")
    command = [*WANX, "generate", str(image), "--model", "wan2.2-i2v-flash", "--resolution", "720P",
               "--duration", "5", "--wait", "60"]  # fmt: skip
    racing = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]  # fmt: skip
    done = [(process.wait(120), *process.communicate()) for process in racing]
    assert sorted(code for code, _, _ in done) == [0, 1], done
    refused = next(stderr for code, _, stderr in done if code == 1)
    assert refused.strip().startswith("error: BudgetExceeded: ") and "Traceback" not in refused
    assert refused.strip().count("\n") == 0
    assert simulator.state.stats()["creates_received"] == 1
