"""The ``wanx-mcp`` commands as people run them: output, --json, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from support import WANX, isolated_env, settings_for

from wanx_mcp.catalog import MODELS
from wanx_mcp.errors import AGENT, DashScopeError, InvalidInput, MissingApiKey, Surface
from wanx_mcp.service import Wanx
from wanx_mcp.store.sqlite import SQLiteStore
from wanx_mcp.tasks import Task, hint_for


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return isolated_env(tmp_path, **{"WANX_SIMULATOR_SPEED": "100", **extra})


def wanx(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WANX, *args], env=env_for(tmp_path, **extra),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.webp"
    Image.new("RGB", (800, 600), "#227755").save(path)
    return path


def test_generate_prints_the_saved_path_and_json(tmp_path: Path, image: Path) -> None:
    done = wanx(tmp_path, "generate", str(image), "waves roll in", "--simulate", "--resolution", "480P")
    assert done.returncode == 0, done.stderr
    saved = Path(done.stdout.strip().splitlines()[-1])
    assert saved.is_file() and saved.read_bytes()[4:8] == b"ftyp"
    assert "submitted" in done.stderr and "480P" in done.stderr and "CNY" in done.stderr
    assert "SUCCEEDED" in done.stdout and "waves roll in" in done.stdout

    listed = wanx(tmp_path, "tasks", "--simulate", "--json")
    tasks = json.loads(listed.stdout)["tasks"]
    assert [t["video_path"] for t in tasks] == [str(saved)]
    table = wanx(tmp_path, "tasks", "--simulate")
    assert tasks[0]["task_id"] in table.stdout and "SUCCEEDED" in table.stdout
    shown = wanx(tmp_path, "show", tasks[0]["task_id"], "--simulate", "--json")
    assert json.loads(shown.stdout)["status"] == "SUCCEEDED"


def test_models_table_and_json(tmp_path: Path) -> None:
    table = wanx(tmp_path, "models")
    assert table.returncode == 0 and "wan2.2-i2v-flash" in table.stdout and "recommended" in table.stdout
    models = json.loads(wanx(tmp_path, "models", "--json").stdout)["models"]
    assert len(models) == len(MODELS) and {"name", "resolutions", "durations", "price_cny_per_second"} <= set(models[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resolution", "4K"], "InvalidInput: resolution='4K'"),
        (["--seed", "-3"], "InvalidInput: seed=-3"),
        (["--model", "nope"], "InvalidInput: model='nope'"),
    ],
)
def test_bad_input_exits_2_with_the_rule(tmp_path: Path, image: Path, args: list[str], message: str) -> None:
    done = wanx(tmp_path, "generate", str(image), "x", "--simulate", *args)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_image_exits_2(tmp_path: Path) -> None:
    done = wanx(tmp_path, "generate", str(tmp_path / "missing.png"), "--simulate")
    assert done.returncode == 2 and "InvalidInput: image=" in done.stderr


def test_api_errors_exit_1(tmp_path: Path, image: Path, simulator: Any) -> None:
    wrong_key = wanx(tmp_path, "generate", str(image), env_key := "x", DASHSCOPE_API_KEY="sk-wrong",
                     DASHSCOPE_HTTP_BASE_URL=simulator.base_url)  # fmt: skip
    assert env_key and wrong_key.returncode == 1 and "InvalidApiKey" in wrong_key.stderr
    failed = wanx(tmp_path, "generate", str(image), "[simulate:DataInspectionFailed]", "--simulate")
    assert failed.returncode == 1 and "DataInspectionFailed" in failed.stdout


def test_no_key_exits_1_and_says_how_to_get_one(tmp_path: Path, image: Path) -> None:
    done = wanx(tmp_path, "generate", str(image), "x", DASHSCOPE_HTTP_BASE_URL="http://127.0.0.1:9/api/v1")
    assert done.returncode == 1 and "MissingApiKey" in done.stderr and "add --simulate" in done.stderr
    assert "WANX_SIMULATE" not in done.stderr  # that is how an agent's config says it, not a person's command


def test_messages_use_flags_not_tool_arguments(tmp_path: Path) -> None:
    transparent = tmp_path / "logo.png"
    Image.new("RGBA", (640, 480), (255, 0, 0, 128)).save(transparent)
    done = wanx(tmp_path, "generate", str(transparent), "x", "--simulate")
    assert done.returncode == 2 and "transparent" in done.stderr and "--fit-image fixes this" in done.stderr
    assert "fit_image=true" not in done.stderr


def test_one_source_of_hints_in_each_surface_s_words() -> None:
    person, simulating = Surface(cli=True), Surface(cli=True, simulate=True)
    refused = InvalidInput("image", "a.png", "has transparent pixels", fixed_by="fit_image")
    agent_text = "InvalidInput: image='a.png': has transparent pixels; fit_image=true fixes this"
    assert str(refused) == refused.render(AGENT) == agent_text
    assert refused.render(person).endswith("; --fit-image fixes this")
    ambiguous = DashScopeError("AmbiguousCreate", "the answer was lost")
    assert "list_tasks before" in str(ambiguous) and "Model Studio console" in ambiguous.render(person)
    assert "WANX_SIMULATE=1" in str(MissingApiKey()) and "add --simulate" in MissingApiKey().render(person)
    running = Task(task_id="0123abcd-0000", status="RUNNING", model="wan2.2-i2v-flash")
    assert "get_task(task_id='0123abcd-0000', wait_seconds=50)" in hint_for(running, 30)
    assert "`wanx-mcp show 0123abcd-0000 --wait 600 --simulate`" in hint_for(running, 30, simulating)
    assert "(about 30 s left)" in hint_for(running, 30, person)


@pytest.mark.anyio
async def test_the_library_error_for_a_fixable_image_names_the_fix_for_both(tmp_path: Path, simulator: Any) -> None:
    transparent = tmp_path / "logo.png"
    Image.new("RGBA", (640, 480), (255, 0, 0, 128)).save(transparent)
    async with Wanx.open(settings_for(simulator, tmp_path)) as wanx:
        with pytest.raises(InvalidInput) as refused:
            await wanx.create({"image": str(transparent), "prompt": "x"})
    assert str(refused.value).endswith("fit_image=true fixes this")
    assert refused.value.render(Surface(cli=True)).endswith("--fit-image fixes this")
    assert simulator.state.stats()["creates_received"] == 0  # nothing was sent


def test_a_wait_that_runs_out_exits_1_with_the_command_to_resume(tmp_path: Path, image: Path) -> None:
    done = wanx(tmp_path, "generate", str(image), "x", "--simulate", "--model", "wan2.2-i2v-plus", "--wait", "0.5",
                WANX_SIMULATOR_SPEED="5")  # fmt: skip
    assert done.returncode == 1, done.stderr
    task_id = done.stderr.split("submitted ", 1)[1].split()[0]
    assert f"`wanx-mcp show {task_id} --wait 600 --simulate`" in done.stdout
    assert "get_task" not in done.stdout + done.stderr


def test_show_exit_codes(tmp_path: Path, simulator: Any) -> None:
    unknown = wanx(tmp_path, "show", "0000aaaa-0000-0000-0000-000000000000", DASHSCOPE_API_KEY=simulator.api_key,
                   DASHSCOPE_HTTP_BASE_URL=simulator.base_url)  # fmt: skip
    assert unknown.returncode == 1 and "UNKNOWN" in unknown.stdout and "does not know this task id" in unknown.stdout
    bad = wanx(tmp_path, "show", "no", "--simulate")
    assert bad.returncode == 2 and "InvalidInput: task_id='no'" in bad.stderr


def test_every_command_accepts_simulate_and_has_help_for_every_option() -> None:
    from wanx_mcp.cli import parser

    root = parser()
    assert "``" not in root.format_help()
    commands = root._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"install", "doctor", "models", "simulator", "demo", "serve"} <= set(commands)
    for name, sub in commands.items():
        assert "--simulate" in sub.format_help(), name
        assert "``" not in sub.format_help(), f"reST markup in `wanx-mcp {name} --help`"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert root.parse_args(["models", "--simulate"]).simulate


def test_models_accepts_simulate(tmp_path: Path) -> None:
    done = wanx(tmp_path, "models", "--simulate")
    assert done.returncode == 0 and "wan2.2-i2v-flash" in done.stdout


def journaled(path: Path) -> list[Task]:
    """The tasks in the journal at ``path``, as another process reading it sees them."""

    async def read() -> list[Task]:
        store = SQLiteStore(path)
        await store.open()
        try:
            return await store.list_tasks()
        finally:
            await store.close()

    return anyio.run(read)


def test_ctrl_c_leaves_the_task_journaled_and_show_picks_it_up(tmp_path: Path, image: Path) -> None:
    env = env_for(tmp_path, WANX_SIMULATOR_SPEED="5")  # wan2.2-i2v-plus then takes ~40 s
    process = subprocess.Popen(
        [*WANX, "generate", str(image), "--model", "wan2.2-i2v-plus", "--simulate"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    journal_path = tmp_path / "data" / "journal.sqlite3"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (journal_path.exists() and journaled(journal_path)):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    task_id = journaled(journal_path)[0].task_id
    assert f"`wanx-mcp show {task_id} --wait 600 --simulate`" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_then_the_printed_command_verbatim_gets_the_video(tmp_path: Path, image: Path) -> None:
    """The built-in simulator remembers: a task created by one --simulate process finishes in the next."""
    env = env_for(tmp_path, WANX_SIMULATOR_SPEED="20")  # wan2.2-i2v-flash: ~3 s
    process = subprocess.Popen([*WANX, "generate", str(image), "--simulate"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stderr is not None
    before = [process.stderr.readline()]
    while before[-1] and not before[-1].startswith("submitted "):
        before.append(process.stderr.readline())
    assert before[-1].startswith("submitted "), before
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    [command] = re.findall(r"`(wanx-mcp show [^`]+)`", stderr)
    assert command.endswith("--simulate")
    words = shlex.split(command)
    resumed = subprocess.run([*WANX, *words[1:]], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "SUCCEEDED" in resumed.stdout
    video = Path(resumed.stdout.split("video  ", 1)[1].split()[0])
    assert video.is_file() and video.read_bytes()[4:8] == b"ftyp"
