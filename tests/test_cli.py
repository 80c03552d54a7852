"""The ``wanx-mcp`` commands as people run them: output, --json, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import WANX, isolated_env

from wanx_mcp.catalog import MODELS
from wanx_mcp.journal import Journal


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
    assert done.returncode == 1 and "MissingApiKey" in done.stderr and "WANX_SIMULATE=1" in done.stderr


def test_ctrl_c_leaves_the_task_journaled_and_show_picks_it_up(tmp_path: Path, image: Path) -> None:
    env = env_for(tmp_path, WANX_SIMULATOR_SPEED="5")  # wan2.2-i2v-plus then takes ~40 s
    process = subprocess.Popen(
        [*WANX, "generate", str(image), "--model", "wan2.2-i2v-plus", "--simulate"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    journal_path = tmp_path / "data" / "journal.sqlite3"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (journal_path.exists() and Journal(journal_path).list()):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    task_id = Journal(journal_path).list()[0].task_id
    assert f"wanx-mcp show {task_id} --wait" in stderr
    assert "Traceback" not in stderr
