"""The DashScope simulator over real loopback HTTP: API shapes, lifecycle, limits, faults, videos."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import av
import httpx
import pytest
from PIL import Image, ImageStat

from wanx_mcp.simulator import FamilyLimits, RunningSimulator

CREATE = "/services/aigc/video-generation/video-synthesis"
KF2V = "/services/aigc/image2video/video-synthesis"
IMAGE = "https://example.com/cat.png"
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")
WAN22 = "wan2.1/2.2"
MakeSimulator = Callable[..., RunningSimulator]


def api(sim: RunningSimulator, key: str | None = None, **options: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or sim.api_key}", "X-DashScope-Async": "enable"}
    return httpx.Client(base_url=sim.base_url, headers=headers, **options)


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[httpx.Client]:
    with api(simulator) as c:
        yield c


def body(model: str = "wan2.2-i2v-flash", prompt: str | None = "a cat runs", **parameters: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {"img_url": IMAGE}
    if prompt is not None:
        inputs["prompt"] = prompt
    return {"model": model, "input": inputs, "parameters": parameters}


def create(client: httpx.Client, **kwargs: Any) -> str:
    response = client.post(CREATE, json=body(**kwargs))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["output"]["task_status"] == "PENDING" and uuid.UUID(data["request_id"])
    return data["output"]["task_id"]


def status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_final(client: httpx.Client, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = status(client, task_id)
        if data["output"]["task_status"] not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def error_of(response: httpx.Response, status_code: int) -> str:
    assert response.status_code == status_code, response.text
    data = response.json()
    assert data["message"] and uuid.UUID(data["request_id"])
    return data["code"]


# -- protocol --------------------------------------------------------------------------------------


def test_requests_need_a_valid_bearer_key(simulator: RunningSimulator) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": f"Basic {simulator.api_key}"},
    ):
        with httpx.Client(base_url=simulator.base_url, headers={"X-DashScope-Async": "enable", **headers}) as c:
            assert error_of(c.post(CREATE, json=body()), 401) == "InvalidApiKey"
            assert error_of(c.get("/tasks/some-id"), 401) == "InvalidApiKey"
            assert error_of(c.get("/tasks/"), 401) == "InvalidApiKey"
            assert error_of(c.post("/tasks/some-id/cancel"), 401) == "InvalidApiKey"
    assert simulator.state.stats()["tasks_created"] == 0


def test_create_without_async_header_is_refused(simulator: RunningSimulator) -> None:
    headers = {"Authorization": f"Bearer {simulator.api_key}"}
    response = httpx.post(simulator.base_url + CREATE, headers=headers, json=body())
    assert error_of(response, 403) == "AccessDenied"
    assert response.json()["message"] == "current user api does not support synchronous calls"


INVALID = [
    (b"{not json", "body"),
    ({"model": "wan9-i2v", "input": {"img_url": IMAGE}}, "Model not exist"),
    ({"input": {"img_url": IMAGE}}, "model"),
    ({"model": "wan2.2-i2v-flash", "input": {"prompt": "x"}}, "img_url"),
    ({"model": "wan2.2-i2v-flash", "input": {"img_url": "ftp://host/a.png"}}, "img_url"),
    ({"model": "wan2.2-i2v-flash", "input": {"img_url": "cat.png"}}, "img_url"),
    (body(resolution="4K"), "resolution"),
    (body(model="wan2.2-i2v-plus", resolution="720P"), "resolution"),
    (body(duration=10), "duration"),
    (body(model="wanx2.1-i2v-turbo", duration=6), "duration"),
    ({**body(), "input": {"img_url": IMAGE, "template": "flying"}}, "template"),
    ({**body("wanx2.1-i2v-turbo"), "input": {"img_url": IMAGE, "template": "melt"}}, "template"),
    (body(prompt="x" * 801), "800"),
    (body(model="wan2.6-i2v", prompt="x" * 1501), "1500"),
    ({**body(), "input": {"img_url": IMAGE, "negative_prompt": "x" * 501}}, "500"),
    (body(seed=-1), "seed"),
    (body(seed=2_147_483_648), "seed"),
    (body(seed="42"), "seed"),
    (body(duration=5), "does not take parameters.duration"),
    (body(model="wan2.6-i2v", duration=5.0), "duration"),
    (body(model="wan2.6-i2v", duration=16), "duration"),
    (body(model="wan2.6-i2v", resolution="480P"), "resolution"),
    (body(watermark="no"), "watermark"),
    (body(prompt_extend=1), "prompt_extend"),
    ({**body(), "input": {"img_url": IMAGE, "audio_url": "https://example.com/a.mp3"}}, "audio_url"),
    ({**body("wan2.5-i2v-preview"), "input": {"img_url": IMAGE, "audio_url": "a.mp3"}}, "audio_url"),
    (body(model="wan2.6-i2v", audio=False), "audio"),
    (body(model="wan2.6-i2v-flash", audio="off"), "audio"),
    (body(model="wan2.5-i2v-preview", shot_type="single"), "shot_type"),
    (body(model="wan2.6-i2v", shot_type="many"), "shot_type"),
    (body(model="wan2.6-i2v", shot_type="multi", prompt_extend=False), "prompt_extend"),
    ({**body("wan2.2-i2v-plus"), "input": {"img_url": IMAGE, "template": "hanfu-1"}}, "template"),
    ({**body("wanx2.1-i2v-plus"), "input": {"img_url": IMAGE, "template": "hanfu-1"}}, "template"),
    ({**body("wanx2.1-i2v-plus"), "input": {"img_url": "data:image/png;base64,!!!"}}, "base64"),
    (body(model="wan2.2-kf2v-flash"), "image2video"),
]


def test_invalid_requests_are_400_invalid_parameter(client: httpx.Client, simulator: RunningSimulator) -> None:
    for request_body, words in INVALID:
        if isinstance(request_body, bytes):
            response = client.post(CREATE, content=request_body, headers={"Content-Type": "application/json"})
        else:
            response = client.post(CREATE, json=request_body)
        assert error_of(response, 400) == "InvalidParameter", request_body
        assert words in response.json()["message"], (request_body, response.json())
    assert simulator.state.stats()["tasks_created"] == 0


def test_accepts_aliases_data_uris_oss_urls_templates_and_limits_at_the_edge(client: httpx.Client) -> None:
    data_uri = {"model": "wan2.1-i2v-plus", "input": {"img_url": "data:image/png;base64,iVBORw0KGgo="}}
    assert client.post(CREATE, json=data_uri).status_code == 200
    template = {"model": "wanx2.1-i2v-plus", "input": {"img_url": "oss://bucket/a.png", "template": "melt"}}
    assert client.post(CREATE, json=template).status_code == 200
    for model, prompt in (("wan2.6-i2v", "x" * 1500), ("wan2.5-i2v-preview", "y" * 1500)):
        assert client.post(CREATE, json=body(model, prompt, duration=10, seed=2_147_483_647)).status_code == 200


def png_uri(width: int, height: int, color: str = "red", fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def kf2v_body(model: str = "wan2.2-kf2v-flash", **inputs: Any) -> dict[str, Any]:
    return {"model": model, "input": {"first_frame_url": IMAGE, "prompt": "a door opens", **inputs}}


def test_keyframe_endpoint_takes_first_and_last_frames(make_simulator: MakeSimulator) -> None:
    simulator = make_simulator(limits={WAN22: FamilyLimits(submissions_per_second=10)})
    client = api(simulator)
    both = client.post(KF2V, json=kf2v_body(last_frame_url="https://example.com/last.png"))
    assert both.status_code == 200, both.text
    task_id = both.json()["output"]["task_id"]
    first_only = client.post(KF2V, json={**kf2v_body("wanx2.1-kf2v-plus", template="mech1")})
    assert first_only.status_code == 200, first_only.text
    final = wait_final(client, task_id)
    assert final["output"]["task_status"] == "SUCCEEDED" and final["usage"]["SR"] == 720
    record = simulator.state.stats()["tasks"][task_id]
    assert record["model"] == "wan2.2-kf2v-flash" and record["parameters"] == {}
    assert record["input_fields"] == ["first_frame_url", "last_frame_url", "prompt"]
    listed = client.get("/tasks/", params={"task_id": task_id}).json()["data"][0]
    assert listed["user_api_unique_key"] == "apikey:v1:aigc:image2video:video-synthesis:wan2.2-kf2v-flash"
    assert client.post(KF2V, json={**kf2v_body(), "parameters": {"resolution": "1080P"}}).status_code == 200


KF2V_INVALID = [
    ({"model": "wan2.2-kf2v-flash", "input": {"img_url": IMAGE}}, "first_frame_url"),
    (kf2v_body(first_frame_url="cat.png"), "first_frame_url"),
    (kf2v_body(last_frame_url="ftp://host/b.png"), "last_frame_url"),
    ({**kf2v_body("wanx2.1-kf2v-plus"), "parameters": {"resolution": "480P"}}, "resolution"),
    ({**kf2v_body(), "parameters": {"duration": 5}}, "duration"),
    (kf2v_body(template="mech1"), "does not support input.template"),
    (kf2v_body("wanx2.1-kf2v-plus", template="flying"), "template"),
    (kf2v_body("wanx2.1-kf2v-plus", template="mech2", last_frame_url=IMAGE), "first frame only"),
    (kf2v_body(prompt="x" * 801), "800"),
    (kf2v_body(negative_prompt="x" * 501), "500"),
    (body(), "video-generation"),
]


def test_keyframe_endpoint_refuses_what_the_docs_forbid(client: httpx.Client, simulator: RunningSimulator) -> None:
    for request_body, words in KF2V_INVALID:
        response = client.post(KF2V, json=request_body)
        assert error_of(response, 400) == "InvalidParameter", request_body
        assert words in response.json()["message"], (request_body, response.json())
    wrong_endpoint = client.post(CREATE, json=kf2v_body()).json()["message"]
    assert "wan2.2-kf2v-flash" in wrong_endpoint and KF2V in wrong_endpoint
    assert simulator.state.stats()["tasks_created"] == 0


def test_data_uri_images_are_checked_against_the_documented_limits(make_simulator: MakeSimulator) -> None:
    client = api(make_simulator(limits={WAN22: FamilyLimits(submissions_per_second=10)}))

    def sent(url: str, model: str = "wan2.2-i2v-flash") -> httpx.Response:
        return client.post(CREATE, json={"model": model, "input": {"img_url": url}})

    gif = png_uri(300, 300, fmt="GIF")
    assert "GIF" in sent(gif).json()["message"]
    for ok in (png_uri(240, 240), png_uri(300, 500, fmt="JPEG"), png_uri(320, 240, fmt="WEBP")):
        assert sent(ok).status_code == 200
    big = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + bytes(11 * 1024 * 1024)).decode()
    assert "at most 10485760" in sent(big).json()["message"]
    assert sent(big, "wan2.5-i2v-preview").status_code == 200  # 20 MB on wan2.5/2.6


def test_unknown_fields_are_accepted_and_recorded(client: httpx.Client, simulator: RunningSimulator) -> None:
    sent = body(model="wan2.6-i2v-flash", duration=8, shot_type="multi", audio=False, mystery=1)
    sent["input"] |= {"negative_promt": "blurry", "audio_url": "https://example.com/a.mp3"}
    task_id = create(client, **{})  # a plain one next to it
    response = client.post(CREATE, json=sent)
    assert response.status_code == 200, response.text
    record = simulator.state.stats()["tasks"][response.json()["output"]["task_id"]]
    assert record["input_fields"] == ["audio_url", "img_url", "negative_promt", "prompt"]
    assert record["parameters"] == {"duration": 8, "shot_type": "multi", "audio": False, "mystery": 1}
    assert simulator.state.stats()["tasks"][task_id]["input_fields"] == ["img_url", "prompt"]


def test_submissions_over_the_family_rate_are_throttled_per_key_and_family(
    make_simulator: MakeSimulator,
) -> None:
    sim = make_simulator(api_keys={"sk-a", "sk-b"})
    with api(sim, "sk-a") as a, api(sim, "sk-b") as b:
        create(a)
        create(a, model="wanx2.1-i2v-turbo")
        assert error_of(a.post(CREATE, json=body()), 429) == "Throttling.RateQuota"
        create(a, model="wan2.5-i2v-preview")
        create(b)
        time.sleep(1.0)
        create(a)
    assert sim.state.stats()["creates_received"] == 6 and sim.state.stats()["tasks_created"] == 5


# -- lifecycle -------------------------------------------------------------------------------------


def test_task_runs_to_succeeded_at_an_exact_recorded_time(client: httpx.Client, simulator: RunningSimulator) -> None:
    task_id = create(client)
    early = status(client, task_id)["output"]
    assert early["task_status"] in ("PENDING", "RUNNING") and STAMP.match(early["submit_time"])
    assert "video_url" not in early and "end_time" not in early
    final = wait_final(client, task_id)
    out = final["output"]
    assert out["task_status"] == "SUCCEEDED"
    assert all(STAMP.match(out[k]) for k in ("submit_time", "scheduled_time", "end_time"))
    assert out["submit_time"] <= out["scheduled_time"] <= out["end_time"]
    assert out["video_url"].startswith(f"{simulator.root_url}/results/{task_id}.mp4?Expires=")
    assert out["orig_prompt"] == "a cat runs"
    record = simulator.state.stats()["tasks"][task_id]
    assert record["status"] == "SUCCEEDED" and record["model"] == "wan2.2-i2v-flash"
    assert record["run_seconds"] == pytest.approx(60 / 200)
    assert record["succeeded_at"] - record["started_at"] == pytest.approx(record["run_seconds"])
    assert record["succeeded_at"] == record["ended_at"] and record["succeeded_monotonic"] <= time.monotonic()
    assert simulator.state.clock.stamp(record["succeeded_at"]) == out["end_time"]


def test_usage_and_actual_prompt_follow_each_family(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(speed=2000, limits={WAN22: FamilyLimits(submissions_per_second=10, running_tasks=10)})
    with api(sim) as c:
        plus = {"duration": 5, "SR": 480, "video_count": 1}
        flash = {"duration": 5, "SR": 720, "video_count": 1}
        turbo = {"video_duration": 3, "video_ratio": "720P", "video_count": 1}
        preview = {"duration": 10, "SR": 1080, "video_count": 1}
        wan26 = {
            "duration": 2,
            "input_video_duration": 0,
            "output_video_duration": 2,
            "video_count": 1,
            "SR": 720,
        }
        cases = {
            create(c, model="wan2.2-i2v-plus", resolution="480P"): (plus, True),
            create(c, model="wan2.2-i2v-flash", prompt_extend=False): (flash, False),
            create(c, model="wanx2.1-i2v-turbo", duration=3): (turbo, True),
            create(c, model="wan2.5-i2v-preview", duration=10): (preview, True),
            create(c, model="wan2.6-i2v-flash", duration=2, resolution="720P"): (wan26, False),
        }
        for task_id, (usage, extended) in cases.items():
            final = wait_final(c, task_id)
            assert final["output"]["task_status"] == "SUCCEEDED"
            assert final["usage"] == usage
            actual = final["output"].get("actual_prompt")
            assert (actual is not None) == extended
            if actual:
                assert actual.lower().startswith("a cat runs") and len(actual) > 3 * len("a cat runs")


def test_durations_scale_with_video_length_and_jitter_is_seeded(make_simulator: MakeSimulator) -> None:
    def run_seconds(**options: Any) -> list[float]:
        sim = make_simulator(**options)
        with api(sim) as c:
            ids = [create(c, model="wan2.6-i2v", duration=d) for d in (5, 10, 15)]
        return [sim.state.stats()["tasks"][i]["run_seconds"] for i in ids]

    assert run_seconds() == pytest.approx([300 / 200, 600 / 200, 900 / 200])
    jittered = run_seconds(jitter=True, seed=7)
    assert jittered == run_seconds(jitter=True, seed=7) != run_seconds(jitter=True, seed=8)
    assert all(0.8 * base <= j <= 1.2 * base for j, base in zip(jittered, (1.5, 3.0, 4.5), strict=True))


def test_tasks_beyond_the_running_slots_queue_and_start_as_slots_free(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(speed=100, limits={WAN22: FamilyLimits(submissions_per_second=10, running_tasks=2)})
    with api(sim) as c:
        first, second, third = (create(c) for _ in range(3))
        assert [status(c, t)["output"]["task_status"] for t in (first, second, third)] == [
            "RUNNING",
            "RUNNING",
            "PENDING",
        ]
        other_family = create(c, model="wan2.6-i2v-flash")
        assert status(c, other_family)["output"]["task_status"] == "RUNNING"
        assert wait_final(c, third)["output"]["task_status"] == "SUCCEEDED"
    tasks = sim.state.stats()["tasks"]
    assert tasks[third]["started_at"] == min(tasks[first]["ended_at"], tasks[second]["ended_at"])


def test_cancel_only_pending_tasks(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(limits={WAN22: FamilyLimits(running_tasks=1)})
    with api(sim) as c:
        running, queued = create(c, model="wan2.2-i2v-plus"), create(c)
        assert c.post(f"/tasks/{queued}/cancel").json().keys() == {"request_id"}
        canceled = status(c, queued)["output"]
        assert canceled["task_status"] == "CANCELED" and STAMP.match(canceled["end_time"])
        assert error_of(c.post(f"/tasks/{running}/cancel"), 400) == "UnsupportedOperation"
        assert error_of(c.post(f"/tasks/{queued}/cancel"), 400) == "UnsupportedOperation"
        assert error_of(c.post(f"/tasks/{uuid.uuid4()}/cancel"), 400) == "UnsupportedOperation"
        assert status(c, running)["output"]["task_status"] == "RUNNING"
    assert sim.state.stats()["cancels"] == 4


def test_hold_keeps_tasks_pending_until_released(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(hold_pending=True)
    with api(sim) as c:
        task_id = create(c)
        time.sleep(0.2)
        assert status(c, task_id)["output"]["task_status"] == "PENDING"
        released = time.time()
        assert httpx.post(f"{sim.root_url}/_simulator/hold", json={"pending": False}).json() == {"hold_pending": False}
        assert wait_final(c, task_id)["output"]["task_status"] == "SUCCEEDED"
    assert sim.state.stats()["tasks"][task_id]["started_at"] >= released


def test_unknown_and_foreign_task_ids_are_unknown(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(api_keys={"sk-a", "sk-b"})
    with api(sim, "sk-a") as a, api(sim, "sk-b") as b:
        task_id = create(a)
        for client, asked in ((a, str(uuid.uuid4())), (b, task_id)):
            data = status(client, asked)
            assert data["output"] == {"task_id": asked, "task_status": "UNKNOWN"} and data["request_id"]


def test_list_filters_pages_and_checks_its_window(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(hold_pending=True)
    with api(sim) as c:
        flash = create(c)
        turbo = create(c, model="wanx2.1-i2v-turbo")
        canceled = create(c, model="wan2.6-i2v")
        c.post(f"/tasks/{canceled}/cancel")
        everything = c.get("/tasks/").json()
        assert everything["total"] == 3 and everything["total_page"] == 1 and everything["page_size"] == 10
        assert [item["task_id"] for item in everything["data"]] == [canceled, turbo, flash]
        item = everything["data"][-1]
        assert item["status"] == "PENDING" and item["model_name"] == "wan2.2-i2v-flash"
        assert item["region"] == "cn-beijing" and abs(item["gmt_create"] / 1000 - time.time()) < 5
        assert c.get("/tasks", params={"status": "CANCELED"}).json()["data"][0]["task_id"] == canceled
        assert c.get("/tasks/", params={"model_name": "wanx2.1-i2v-turbo"}).json()["total"] == 1
        assert [i["task_id"] for i in c.get("/tasks/", params={"task_id": flash}).json()["data"]] == [flash]
        page = c.get("/tasks/", params={"page_size": 2, "page_no": 2}).json()
        assert page["total_page"] == 2 and [i["task_id"] for i in page["data"]] == [flash]
        assert c.get("/tasks/", params={"end_time": "20200101000000"}).json()["total"] == 0
        too_wide = {"start_time": "20200101000000", "end_time": "20200103000000"}
        assert error_of(c.get("/tasks/", params=too_wide), 400) == "InvalidParameter"
        assert error_of(c.get("/tasks/", params={"start_time": "yesterday"}), 400) == "InvalidParameter"
        sim.state.hold_pending = False
        wait_final(c, flash)
        started = c.get("/tasks/", params={"task_id": flash}).json()["data"][0]
        assert (
            started["status"] == "SUCCEEDED" and started["gmt_create"] <= started["start_time"] <= started["end_time"]
        )
    assert sim.state.stats()["lists"] == 9


# -- videos ----------------------------------------------------------------------------------------


def test_video_is_a_playable_h264_mp4(client: httpx.Client, simulator: RunningSimulator) -> None:
    url = wait_final(client, create(client))["output"]["video_url"]
    response = httpx.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content) < 100_000
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (320, 240)
        frames = list(container.decode(stream))
    assert len(frames) >= 24 and frames[0].format.name == "yuv420p"
    missing = httpx.get(f"{simulator.root_url}/results/{uuid.uuid4()}.mp4")
    assert missing.status_code == 404 and b"NoSuchKey" in missing.content


def test_video_url_and_task_expire(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(speed=1000, expiry_seconds=1500)
    with api(sim) as c:
        task_id = create(c)
        url = wait_final(c, task_id)["output"]["video_url"]
        expires = int(re.search(r"Expires=(\d+)", url).group(1))  # type: ignore[union-attr]
        assert abs(expires - (time.time() + 1500 / 1000)) < 2
        assert httpx.get(url).status_code == 200
        time.sleep(1.55)
        expired = httpx.get(url)
        assert expired.status_code == 403 and b"<Code>AccessDenied</Code>" in expired.content
        assert status(c, task_id)["output"]["task_status"] == "UNKNOWN"


# -- failures and faults ---------------------------------------------------------------------------


def test_prompt_marker_and_fault_make_the_task_fail(client: httpx.Client, simulator: RunningSimulator) -> None:
    marked = create(client, prompt="[simulate:DataInspectionFailed] a cat")
    algo = create(client, model="wan2.6-i2v-flash", duration=2, prompt="boom [simulate:InternalError.Algo]")
    simulator.state.faults.add("create", "task_failed")
    injected = create(client, model="wan2.6-i2v-flash", duration=2)
    expected = {
        marked: ("DataInspectionFailed", "Output data may contain inappropriate content."),
        algo: ("InternalError.Algo", None),
        injected: ("DataInspectionFailed", "Output data may contain inappropriate content."),
    }
    for task_id, (code, message) in expected.items():
        data = wait_final(client, task_id)
        out = data["output"]
        assert out["task_status"] == "FAILED" and out["code"] == code and out["message"]
        assert message is None or out["message"] == message
        assert "usage" not in data and "video_url" not in out and STAMP.match(out["end_time"])


def test_create_faults_answer_before_any_task_exists(client: httpx.Client, simulator: RunningSimulator) -> None:
    faults = simulator.state.faults
    faults.add("create", "error", count=2)
    faults.add("create", "error", status=429)
    faults.add("create", "error", status=400, code="InvalidParameter.DataInspection")
    faults.add("create", "html_502")
    assert error_of(client.post(CREATE, json=body()), 500) == "InternalError"
    assert error_of(client.post(CREATE, json=body()), 500) == "InternalError"
    assert error_of(client.post(CREATE, json=body()), 429) == "Throttling.RateQuota"
    refused = client.post(CREATE, json=body())
    assert error_of(refused, 400) == "InvalidParameter.DataInspection"
    assert refused.json()["message"] == "Input data may contain inappropriate content."
    proxy = client.post(CREATE, json=body())
    assert proxy.status_code == 502 and proxy.headers["content-type"].startswith("text/html")
    assert simulator.state.stats()["tasks_created"] == 0 and not faults.pending()
    create(client)


def test_accept_then_drop_and_hang_create_the_task_but_lose_the_answer(
    simulator: RunningSimulator,
) -> None:
    simulator.state.faults.add("create", "accept_then_drop")
    simulator.state.faults.add("create", "accept_then_hang", seconds=5)
    with api(simulator, timeout=0.3) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(CREATE, json=body())
        with pytest.raises(httpx.ReadTimeout):
            c.post(CREATE, json=body(model="wan2.6-i2v"))
        listed = c.get("/tasks/").json()
    assert listed["total"] == 2 and simulator.state.stats()["tasks_created"] == 2
    assert simulator.state.stats()["requests"][0]["status"] == "dropped"


def test_status_check_faults(client: httpx.Client, simulator: RunningSimulator) -> None:
    task_id = create(client)
    faults = simulator.state.faults
    faults.add("get", "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/tasks/{task_id}")
    faults.add("get", "html_502")
    assert client.get(f"/tasks/{task_id}").status_code == 502
    faults.add("get", "error")
    assert error_of(client.get(f"/tasks/{task_id}"), 500) == "InternalError"
    faults.add("get", "delay", seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/tasks/{task_id}", timeout=0.2)
    faults.add("get", "delay", seconds=0.1)
    started = time.monotonic()
    assert status(client, task_id)["output"]["task_id"] == task_id
    assert time.monotonic() - started >= 0.1
    faults.add("list", "error", status=503)
    assert error_of(client.get("/tasks/"), 503) == "InternalError"


def test_download_faults(client: httpx.Client, simulator: RunningSimulator) -> None:
    url = wait_final(client, create(client))["output"]["video_url"]
    simulator.state.faults.add("download", "truncate")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    simulator.state.faults.add("download", "error")
    failed = httpx.get(url)
    assert failed.status_code == 500 and b"<Code>InternalError</Code>" in failed.content
    simulator.state.faults.add("download", "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    assert httpx.get(url).status_code == 200


def test_faults_over_http_admin_api(simulator: RunningSimulator, client: httpx.Client) -> None:
    admin = f"{simulator.root_url}/_simulator"
    two_errors = {"target": "get", "kind": "error", "count": 2}
    arrears = {"target": "create", "kind": "task_failed", "code": "Arrearage"}
    added = httpx.post(f"{admin}/faults", json=[two_errors, arrears])
    assert added.status_code == 200 and len(added.json()["faults"]) == 2
    described = httpx.get(f"{admin}/faults").json()
    assert "accept_then_drop" in described["kinds"] and "truncate" in described["targets"]["download"]
    for bad in (
        {"target": "get", "kind": "truncate"},
        {"target": "nowhere", "kind": "error"},
        {"target": "get", "kind": "delay"},
        {"kind": "error"},
        "text",
    ):
        assert httpx.post(f"{admin}/faults", json=bad).status_code == 400
    task_id = create(client)
    assert error_of(client.get(f"/tasks/{task_id}"), 500) == "InternalError"
    assert error_of(client.get(f"/tasks/{task_id}"), 500) == "InternalError"
    assert wait_final(client, task_id)["output"]["code"] == "Arrearage"
    assert httpx.delete(f"{admin}/faults").json() == {"faults": []}


def test_invalid_faults_are_refused_in_python(simulator: RunningSimulator) -> None:
    bad: list[tuple[str, str, dict[str, Any]]] = [
        ("get", "task_failed", {}),
        ("create", "accept_then_hang", {}),
        ("create", "error", {"status": 302}),
        ("get", "drop", {"count": 0}),
    ]
    for target, kind, options in bad:
        with pytest.raises(ValueError):
            simulator.state.faults.add(target, kind, **options)


# -- statistics and control ------------------------------------------------------------------------


def test_stats_count_requests_and_record_tasks(client: httpx.Client, simulator: RunningSimulator) -> None:
    task_id = create(client)
    client.post(CREATE, json=body(resolution="4K"))
    url = wait_final(client, task_id)["output"]["video_url"]
    httpx.get(url)
    client.get("/tasks/")
    client.post(f"/tasks/{task_id}/cancel")
    stats = httpx.get(f"{simulator.root_url}/_simulator/stats").json()
    assert stats["creates_received"] == 2 and stats["tasks_created"] == 1
    assert stats["status_gets"] >= 1 and stats["downloads"] == stats["lists"] == stats["cancels"] == 1
    logged = [(r["method"], r["path"], r["status"]) for r in stats["requests"]]
    assert logged[:2] == [("POST", f"/api/v1{CREATE}", 200), ("POST", f"/api/v1{CREATE}", 400)]
    assert ("GET", f"/results/{task_id}.mp4", 200) in logged
    record = stats["tasks"][task_id]
    assert record["created_at"] <= record["started_at"] <= record["succeeded_at"] <= time.time()
    assert httpx.post(f"{simulator.root_url}/_simulator/reset").json() == {"ok": True}
    after = simulator.state.stats()
    assert after["tasks"] == {} and after["requests"] == [] and after["creates_received"] == 0
    assert status(client, task_id)["output"]["task_status"] == "UNKNOWN"


@pytest.mark.anyio
async def test_usable_from_async_tests(simulator: RunningSimulator) -> None:
    headers = {"Authorization": f"Bearer {simulator.api_key}", "X-DashScope-Async": "enable"}
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=headers) as c:
        created = await c.post(CREATE, json=body())
        task_id = created.json()["output"]["task_id"]
        for _ in range(200):
            data = (await c.get(f"/tasks/{task_id}")).json()
            if data["output"]["task_status"] == "SUCCEEDED":
                break
            await anyio.sleep(0.02)
    assert data["output"]["task_status"] == "SUCCEEDED" and simulator.speed == 200


# -- accounts, request log, hostile faults ---------------------------------------------------------


def test_keys_of_one_account_share_its_tasks_limits_and_slots(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(speed=20, api_keys={"sk-other"}, accounts={"sk-a1": "acme", "sk-a2": "acme"})
    with api(sim, "sk-a1") as a1, api(sim, "sk-a2") as a2, api(sim, "sk-other") as other:
        first, second = create(a1, model="wan2.2-i2v-plus"), create(a2, model="wan2.2-i2v-plus")
        assert error_of(a2.post(CREATE, json=body()), 429) == "Throttling.RateQuota"
        assert error_of(a1.post(CREATE, json=body()), 429) == "Throttling.RateQuota"
        foreign = create(other)
        assert status(a2, first)["output"]["task_status"] == "RUNNING"
        assert status(other, first)["output"]["task_status"] == "UNKNOWN"
        assert {i["task_id"] for i in a1.get("/tasks/").json()["data"]} == {first, second}
        assert [i["task_id"] for i in other.get("/tasks/").json()["data"]] == [foreign]
        time.sleep(1.0)
        queued = create(a2)
        assert status(a1, queued)["output"]["task_status"] == "PENDING"  # both slots of acme are busy
        assert status(other, foreign)["output"]["task_status"] == "RUNNING"
    assert sim.state.stats()["throttled"] == 2
    assert error_of(httpx.get(f"{sim.base_url}/tasks/", headers={"Authorization": "Bearer acme"}), 401)


def test_request_log_records_agent_and_time(simulator: RunningSimulator) -> None:
    before = time.time()
    with api(simulator) as c:
        c.headers["User-Agent"] = "probe/1.0"
        create(c)
    with api(simulator) as c:
        c.get("/tasks/")
    tagged, listed = simulator.state.stats()["requests"]
    assert tagged["agent"] == "probe/1.0" and listed["agent"].startswith("python-httpx/")
    assert before <= tagged["at"] <= listed["at"] <= time.time()


def test_bad_task_id_answers_a_hostile_id_but_the_task_exists(
    client: httpx.Client, simulator: RunningSimulator
) -> None:
    for hostile in ("../../outside/x", "/abs/path", "a b"):
        simulator.state.faults.add("create", "bad_task_id", value=hostile)
        response = client.post(CREATE, json=body(model="wan2.6-i2v-flash", duration=2))
        assert response.json()["output"]["task_id"] == hostile
    listed = client.get("/tasks/").json()["data"]
    assert len(listed) == 3 and all(uuid.UUID(item["task_id"]) for item in listed)
    assert wait_final(client, listed[0]["task_id"])["output"]["task_status"] == "SUCCEEDED"


def test_echo_auth_puts_the_key_into_the_task(client: httpx.Client, simulator: RunningSimulator) -> None:
    key = simulator.api_key
    simulator.state.faults.add("create", "echo_auth")
    succeeded = wait_final(client, create(client, model="wan2.6-i2v-flash", duration=2))["output"]
    assert succeeded["task_status"] == "SUCCEEDED"
    assert f"Bearer {key}" in succeeded["actual_prompt"] and f"auth=Bearer%20{key}" in succeeded["video_url"]
    assert httpx.get(succeeded["video_url"]).status_code == 200
    simulator.state.faults.add("create", "echo_auth", code="InvalidParameter")
    failed = wait_final(client, create(client, model="wan2.6-i2v-flash", duration=2))["output"]
    assert failed["task_status"] == "FAILED" and failed["code"] == "InvalidParameter"
    assert f"Bearer {key}" in failed["message"]


def test_wrong_resolution_delivers_another_resolution(client: httpx.Client, simulator: RunningSimulator) -> None:
    simulator.state.faults.add("create", "wrong_resolution", value="720P")
    task_id = create(client, model="wan2.2-i2v-plus", resolution="480P")
    assert wait_final(client, task_id)["usage"]["SR"] == 720


def test_corrupt_and_endless_videos(client: httpx.Client, simulator: RunningSimulator) -> None:
    url = wait_final(client, create(client))["output"]["video_url"]
    simulator.state.faults.add("download", "corrupt_video")
    corrupt = httpx.get(url)
    assert corrupt.status_code == 200 and corrupt.content[4:8] == b"ftyp"
    with pytest.raises(av.error.InvalidDataError), av.open(io.BytesIO(corrupt.content)) as container:
        list(container.decode(video=0))
    simulator.state.faults.add("download", "endless")
    received = 0
    with httpx.stream("GET", url) as stream:
        assert stream.status_code == 200 and "content-length" not in stream.headers
        for chunk in stream.iter_bytes():
            received += len(chunk)
            if received > 20_000_000:
                break
    assert received > 20_000_000
    with av.open(io.BytesIO(httpx.get(url).content)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    deadline = time.monotonic() + 2
    while "client_closed" not in [r["status"] for r in simulator.state.stats()["requests"]]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_hostile_faults_need_their_value(simulator: RunningSimulator) -> None:
    for kind, value in (("bad_task_id", None), ("bad_task_id", ""), ("wrong_resolution", "4K")):
        with pytest.raises(ValueError):
            simulator.state.faults.add("create", kind, value=value)
    for target, kind in (("get", "bad_task_id"), ("create", "endless"), ("download", "echo_auth")):
        with pytest.raises(ValueError):
            simulator.state.faults.add(target, kind)
    added = httpx.post(
        f"{simulator.root_url}/_simulator/faults", json={"target": "create", "kind": "bad_task_id", "value": "x"}
    )
    assert added.json()["faults"][0]["value"] == "x"


def test_standalone_simulator_prints_the_environment_to_use_it() -> None:
    command = [sys.executable, "-c", "from wanx_mcp.simulator import serve; serve(port=0)"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            lines = [process.stderr.readline().strip() for _ in range(5)]
            env = dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)
            assert env.keys() == {"DASHSCOPE_HTTP_BASE_URL", "DASHSCOPE_API_KEY", "WANX_DOWNLOAD_HOSTS"}
            assert env["DASHSCOPE_API_KEY"] == "sk-simulator" and env["WANX_DOWNLOAD_HOSTS"] == "127.0.0.1"
            headers = {"Authorization": f"Bearer {env['DASHSCOPE_API_KEY']}"}
            answer = httpx.get(f"{env['DASHSCOPE_HTTP_BASE_URL']}/tasks/{uuid.uuid4()}", headers=headers)
            assert answer.json()["output"]["task_status"] == "UNKNOWN"
        finally:
            process.terminate()


# -- persistent state ------------------------------------------------------------------------------

CREATE_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path

import httpx

from wanx_mcp.simulator import SimulatorConfig, running_simulator

config = SimulatorConfig(speed=float(sys.argv[2]), jitter=False, state_path=Path(sys.argv[1]))
with running_simulator(config) as sim:
    headers = {"Authorization": f"Bearer {sim.api_key}", "X-DashScope-Async": "enable"}
    body = {"model": "wan2.2-i2v-flash", "input": {"img_url": sys.argv[3], "prompt": "a cat runs"}}
    answer = httpx.post(f"{sim.base_url}/services/aigc/video-generation/video-synthesis", headers=headers, json=body)
    print(answer.json()["output"]["task_id"])
"""


def test_a_task_created_by_one_process_finishes_and_downloads_in_the_next(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    state_path = tmp_path / "simulator.sqlite3"
    image = png_uri(320, 240, "blue")
    command = [sys.executable, "-c", CREATE_IN_ANOTHER_PROCESS, str(state_path), "50", image]
    created = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    task_id = created.stdout.strip()
    created_at = time.time()
    sim = make_simulator(state_path=state_path, render=True, render_scale=0.25)
    with api(sim) as c:
        final = wait_final(c, task_id)
        assert final["output"]["task_status"] == "SUCCEEDED" and final["output"]["orig_prompt"] == "a cat runs"
        assert final["output"]["video_url"].startswith(f"{sim.root_url}/results/{task_id}.mp4?")
        record = sim.state.stats()["tasks"][task_id]
        assert record["run_seconds"] == pytest.approx(60 / 50)  # the creating process's speed
        assert record["created_at"] < created_at  # it ran on the wall clock, whichever process looked
        assert record["ended_at"] - record["started_at"] == pytest.approx(60 / 50)
        size, colours, _ = decode_video(final["output"]["video_url"])  # made from the other process's image
        assert size == (240, 180) and all(b > 200 and r < 60 for r, _, b in colours)
        assert sim.state.images(sim.state.get(sim.api_key, task_id)) == {"img_url": image}  # type: ignore[arg-type]
        assert [i["task_id"] for i in c.get("/tasks/").json()["data"]] == [task_id]


SERVE_ON_A_STATE_FILE = """
import sys
from pathlib import Path

from wanx_mcp.simulator import SimulatorConfig, running_simulator

with running_simulator(SimulatorConfig(speed=20, jitter=False, state_path=Path(sys.argv[1]))) as sim:
    print(sim.root_url, flush=True)
    sys.stdin.read()
"""


@pytest.mark.slow
def test_simulator_processes_share_a_state_file_at_the_same_time(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    state_path = tmp_path / "simulator.sqlite3"
    command = [sys.executable, "-c", SERVE_ON_A_STATE_FILE, str(state_path)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            root = process.stdout.readline().strip()
            local = make_simulator(speed=20, state_path=state_path)
            headers = {"Authorization": f"Bearer {local.api_key}", "X-DashScope-Async": "enable"}
            with httpx.Client(base_url=f"{root}/api/v1", headers=headers) as remote, api(local) as here:
                first = create(remote, model="wan2.2-i2v-plus")
                second = create(here, model="wan2.2-i2v-plus")
                assert error_of(remote.post(CREATE, json=body()), 429) == "Throttling.RateQuota"
                assert status(remote, second)["output"]["task_status"] == "RUNNING"
                assert status(here, first)["output"]["task_status"] == "RUNNING"
                listed = remote.get("/tasks/").json()["data"]
                assert {item["task_id"] for item in listed} == {first, second}
        finally:
            process.communicate("", timeout=30)


def test_simulators_sharing_a_state_file_share_tasks_limits_and_slots(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    state_path = tmp_path / "simulator.sqlite3"
    one, two = (make_simulator(speed=20, state_path=state_path) for _ in range(2))
    with api(one) as a, api(two) as b:
        first, second = create(a, model="wan2.2-i2v-plus"), create(b, model="wan2.2-i2v-plus")
        assert error_of(b.post(CREATE, json=body()), 429) == "Throttling.RateQuota"
        assert status(b, first)["output"]["task_status"] == "RUNNING"
        time.sleep(1.0)
        queued = create(a)
        assert status(b, queued)["output"]["task_status"] == "PENDING"  # both slots are taken, in either process
        assert b.post(f"/tasks/{queued}/cancel").status_code == 200
        assert status(a, queued)["output"]["task_status"] == "CANCELED"
        assert {i["task_id"] for i in a.get("/tasks/").json()["data"]} == {first, second, queued}
    assert one.state.stats()["throttled"] == 0 and two.state.stats()["throttled"] == 1
    one.state.reset()
    assert two.state.stats()["tasks"] == {}


# -- rendered videos -------------------------------------------------------------------------------


def decode_video(url: str) -> tuple[tuple[int, int], list[tuple[int, int, int]], float]:
    """Size, the mean colour of each frame, and the duration of the MP4 at ``url``."""
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [frame.to_image() for frame in container.decode(stream)]
        seconds = float(stream.duration * stream.time_base) if stream.duration else len(frames) / 16
    colours = [tuple(round(mean) for mean in ImageStat.Stat(frame).mean) for frame in frames]
    return frames[0].size, colours, seconds  # type: ignore[return-value]


def test_frame_size_follows_the_resolution_and_the_image_aspect() -> None:
    from wanx_mcp.simulator.videos import frame_size

    assert frame_size("480P", 16 / 9) == (854, 480)
    assert frame_size("720P", 9 / 16) == (720, 1280)
    assert frame_size("1080P", 4 / 3) == (1440, 1080)
    assert frame_size("720P", 1.0, 0.25) == (180, 180)


def test_the_video_shows_the_submitted_image_at_the_delivered_size(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(render=True, render_scale=0.25, limits={WAN22: FamilyLimits(submissions_per_second=10)})
    with api(sim) as c:
        red = {"model": "wanx2.1-i2v-turbo", "input": {"img_url": png_uri(640, 480, "red")}}
        red_task = c.post(CREATE, json={**red, "parameters": {"duration": 3, "resolution": "480P"}})
        placeholder = create(c, resolution="480P")
        sim.state.faults.add("create", "wrong_resolution", value="720P")
        wrong = c.post(CREATE, json={**red, "parameters": {"resolution": "480P"}}).json()["output"]["task_id"]
        urls = {
            name: wait_final(c, task_id)["output"]["video_url"]
            for name, task_id in (
                ("red", red_task.json()["output"]["task_id"]),
                ("grey", placeholder),
                ("wrong", wrong),
            )
        }
    size, colours, seconds = decode_video(urls["red"])
    assert size == (160, 120) and len(colours) == 3 * 16 and seconds == pytest.approx(3, abs=0.1)
    assert all(r > 200 and g < 60 and b < 60 for r, g, b in colours)
    size, colours, _ = decode_video(urls["grey"])
    assert size == (214, 120) and all(abs(r - g) < 10 and abs(g - b) < 10 for r, g, b in colours)
    assert decode_video(urls["wrong"])[0] == (240, 180)
    assert httpx.get(urls["red"]).content == httpx.get(urls["red"]).content  # rendered once, then cached


def test_the_keyframe_video_cross_fades_from_the_first_to_the_last_frame(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(render=True, render_scale=0.25)
    with api(sim) as c:
        frames = {"first_frame_url": png_uri(480, 480, "red"), "last_frame_url": png_uri(480, 480, "blue")}
        answer = c.post(KF2V, json={"model": "wan2.2-kf2v-flash", "input": frames})
        url = wait_final(c, answer.json()["output"]["task_id"])["output"]["video_url"]
    size, colours, _ = decode_video(url)
    (r0, _, b0), (r1, _, b1) = colours[0], colours[-1]
    assert size == (180, 180) and len(colours) == 80 and r0 > 200 > b0 and b1 > 200 > r1


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_built_in_simulator_remembers_its_tasks_between_runs(tmp_path: Path, image: Path) -> None:
    from wanx_mcp.config import Settings
    from wanx_mcp.service import Wanx

    settings = Settings(data_dir=tmp_path / "data", allowed_dirs=(tmp_path,), simulate=True, simulator_speed=1000)
    async with Wanx.open(settings) as first_run:
        task_id = (await first_run.create({"image": str(image), "resolution": "480P"})).task_id
    async with Wanx.open(settings) as second_run:  # a new simulator on another port, the same data folder
        done = await second_run.wait(task_id, 20)
    assert done.status == "SUCCEEDED" and done.video_path and Path(done.video_path).read_bytes()[4:8] == b"ftyp"
    assert (tmp_path / "data" / "simulator.sqlite3").is_file()


def test_an_unreadable_state_file_is_set_aside(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    state_path = tmp_path / "simulator.sqlite3"
    state_path.write_bytes(b"not a database, " * 512)
    sim = make_simulator(state_path=state_path)
    with api(sim) as c:
        assert wait_final(c, create(c))["output"]["task_status"] == "SUCCEEDED"
    (aside,) = tmp_path.glob("simulator.sqlite3.corrupt-*")
    assert aside.read_bytes().startswith(b"not a database")
