"""``wanx-mcp doctor`` against simulators: each problem gives its line, its fix and the exit code."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from support import WANX, isolated_env, settings_for

from wanx_mcp.config import Settings
from wanx_mcp.doctor import Check, exit_code, run_checks
from wanx_mcp.simulator import RunningSimulator


def line(checks: list[Check], name: str) -> Check:
    [found] = [c for c in checks if c.name == name]
    return found


def doctor(settings: Settings, tmp_path: Path, regions: dict[str, str] | None = None) -> list[Check]:
    environ = {"HOME": str(tmp_path / "home")}
    return run_checks(settings, regions=regions or {}, environ=environ)


def test_a_good_setup_passes(simulator: RunningSimulator, tmp_path: Path) -> None:
    checks = doctor(settings_for(simulator, tmp_path), tmp_path)
    assert exit_code(checks) == 0, checks
    assert line(checks, "region").level == "ok" and "the key works" in line(checks, "region").message
    assert line(checks, "data folder").level == "ok" and "GB free" in line(checks, "data folder").message
    assert line(checks, "journal").level == "ok"
    assert simulator.api_key not in json.dumps([c.as_dict() for c in checks])


def test_a_key_of_another_region_names_that_region(
    make_simulator: Callable[..., RunningSimulator], tmp_path: Path
) -> None:
    beijing = make_simulator(api_keys={"sk-beijing"})
    singapore = make_simulator(api_keys={"sk-singapore"})
    regions = {"beijing": beijing.base_url, "singapore": singapore.base_url}
    settings = replace(settings_for(beijing, tmp_path), api_key="sk-singapore")
    checks = doctor(settings, tmp_path, regions)
    region = line(checks, "region")
    assert region.level == "fail" and "works in singapore" in region.message
    assert region.fix and "WANX_REGION=singapore" in region.fix
    assert exit_code(checks) == 1
    assert "sk-singapore" not in json.dumps([c.as_dict() for c in checks])

    nowhere = doctor(replace(settings, api_key="sk-neither"), tmp_path, regions)
    assert "every other region" in line(nowhere, "region").message and exit_code(nowhere) == 1


def test_a_missing_key_fails(tmp_path: Path) -> None:
    checks = doctor(Settings(data_dir=tmp_path / "data", allowed_dirs=(tmp_path,)), tmp_path)
    assert line(checks, "api key").level == "fail" and exit_code(checks) == 1


def test_an_unusable_data_folder_fails(simulator: RunningSimulator, tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder must be")  # root ignores chmod; a file blocks everyone
    checks = doctor(settings_for(simulator, tmp_path), tmp_path)
    folder = line(checks, "data folder")
    assert folder.level == "fail" and "not writable" in folder.message and folder.fix and "WANX_DATA_DIR" in folder.fix
    assert line(checks, "journal").level == "fail" and exit_code(checks) == 1


def test_a_corrupt_journal_fails_with_what_to_do(simulator: RunningSimulator, tmp_path: Path) -> None:
    settings = settings_for(simulator, tmp_path)
    settings.data_dir.mkdir(parents=True)
    settings.journal_path.write_bytes(b"this is not a database " * 100)
    checks = doctor(settings, tmp_path)
    journal = line(checks, "journal")
    assert journal.level == "fail" and "JournalError" in journal.message
    assert journal.fix and "move" in journal.fix and exit_code(checks) == 1


def test_missing_image_folders_and_a_simulator_host_warn(simulator: RunningSimulator, tmp_path: Path) -> None:
    settings = settings_for(simulator, tmp_path, allowed_dirs=(tmp_path / "nope",), download_hosts=("*.aliyuncs.com",))
    checks = doctor(settings, tmp_path)
    assert line(checks, "image folders").level == "warn" and "nope" in line(checks, "image folders").message
    downloads = line(checks, "downloads")
    assert downloads.level == "warn" and downloads.fix and "WANX_DOWNLOAD_HOSTS=127.0.0.1" in downloads.fix
    assert exit_code(checks) == 0  # warnings alone pass


def test_configured_clients_are_found(simulator: RunningSimulator, tmp_path: Path) -> None:
    cursor = tmp_path / "home" / ".cursor" / "mcp.json"
    cursor.parent.mkdir(parents=True)
    cursor.write_text(json.dumps({"mcpServers": {"wanx": {"command": "/gone/python", "args": ["-m", "wanx_mcp"]},
                                                 "video": {"command": "uvx", "args": ["wanx-mcp"]}}}))  # fmt: skip
    clients = line(doctor(settings_for(simulator, tmp_path), tmp_path), "mcp clients")
    assert clients.level == "warn" and "cursor (video)" in clients.message
    assert "/gone/python does not exist" in clients.message


def test_the_command_exits_0_or_1_and_never_prints_the_key(simulator: RunningSimulator, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, HOME=str(tmp_path / "home"), DASHSCOPE_HTTP_BASE_URL=simulator.base_url,
                       WANX_DOWNLOAD_HOSTS="127.0.0.1")  # fmt: skip
    good = subprocess.run([*WANX, "doctor", "--json"], env=env | {"DASHSCOPE_API_KEY": simulator.api_key},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    report = json.loads(good.stdout)
    assert report["ok"] is True and {c["name"] for c in report["checks"]} >= {"api key", "region", "journal"}
    assert simulator.api_key not in good.stdout + good.stderr

    bad = subprocess.run([*WANX, "doctor"], env=env | {"DASHSCOPE_API_KEY": "sk-wrong-key-123"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "fail" in bad.stdout and "refused" in bad.stdout
    assert "sk-wrong-key-123" not in bad.stdout + bad.stderr
