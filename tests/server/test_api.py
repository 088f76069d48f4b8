"""`latentlab serve`'s API (server/app.py) on the shipped models, driven directly: JSON in, PNG and JSON out; the
queue in order with positions, cancel, failures that leave the server serving, and requests that name anything
outside the models and outputs folders."""

import base64
import io
import json
import time

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from latentlab.server.app import UPLOAD_BYTES, create_app  # noqa: E402
from latentlab.server.library import Library  # noqa: E402
from latentlab.server.studio import Studio  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"kind": "generate", "prompt": "a large red circle on the left", "steps": 3, "count": 2, "seed": 0}


@pytest.fixture
def client(tmp_path):
    library = Library(tmp_path / "models", tmp_path / "outputs")
    with TestClient(create_app(library, Studio(library, "cpu"))) as client:
        yield client


def wait(client, job_id, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        state = client.get(f"/api/jobs/{job_id}").json()
        if state["state"] in ("done", "failed", "cancelled"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {state}")


def run(client, body):
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 200, response.text
    return wait(client, response.json()["id"])


def test_generate_writes_a_grid_the_history_and_images_serve(client):
    done = run(client, FAST)
    assert done["state"] == "done" and done["steps"] == 3 and len(done["result"]["images"]) == 2
    (grid,) = client.get("/api/history").json()["grids"]
    assert grid["id"] == done["result"]["id"] and grid["images"][1]["seed"] == 1
    assert grid["images"][0]["settings"]["steps"] == 3 and grid["images"][0]["prompt"] == FAST["prompt"]
    picture = client.get(f"/api/images/{grid['id']}/{grid['images'][0]['file']}")
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (32, 32)


def test_the_same_seed_draws_the_same_image_and_random_seeds_are_recorded(client):
    first, again = run(client, FAST), run(client, FAST)
    images = [client.get(f"/api/images/{job['result']['id']}/{job['result']['images'][0]}").content
              for job in (first, again)]
    assert images[0] == images[1]
    random_seed = run(client, {**FAST, "seed": None, "count": 1})
    grid = next(g for g in client.get("/api/history").json()["grids"] if g["id"] == random_seed["result"]["id"])
    assert isinstance(grid["images"][0]["seed"], int)


@pytest.mark.parametrize("action", ["vary", "upscale", "img2img"])
def test_an_image_of_a_grid_is_acted_on(client, action):
    grid = run(client, FAST)["result"]["id"]
    done = run(client, {"kind": action, "grid": grid, "n": 1})
    assert done["state"] == "done", done
    record = next(g for g in client.get("/api/history").json()["grids"] if g["id"] == done["result"]["id"])
    assert all(image["from"]["image"] == 1 and image["from"]["action"] == action for image in record["images"])
    size = 64 if action == "upscale" else 32
    picture = client.get(f"/api/images/{record['id']}/{record['images'][0]['file']}").content
    assert Image.open(io.BytesIO(picture)).size == (size, size)


def mask_url(box):
    image = Image.new("L", (32, 32), 0)
    image.paste(255, box)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_painted_mask_inpaints_and_keeps_the_rest(client):
    grid = run(client, FAST)["result"]
    done = run(client, {"kind": "inpaint", "grid": grid["id"], "n": 0, "mask": mask_url((16, 0, 32, 32)),
                        "prompt": "a small blue square on the right"})
    assert done["state"] == "done", done
    before, after = (Image.open(io.BytesIO(client.get(f"/api/images/{g}/{f}").content))
                     for g, f in ((grid["id"], grid["images"][0]), (done["result"]["id"], done["result"]["images"][0])))
    assert before.crop((0, 0, 16, 32)).tobytes() == after.crop((0, 0, 16, 32)).tobytes()


def test_jobs_run_in_order_with_their_positions_and_cancel_stops_them(client):
    slow = {**FAST, "steps": 200, "count": 1}
    ids = [client.post("/api/jobs", json=slow).json() for _ in range(3)]
    assert [job["position"] for job in ids] == [0, 1, 2] or ids[0]["position"] == 0
    while client.get(f"/api/jobs/{ids[0]['id']}").json()["state"] != "running":
        time.sleep(0.02)
    assert client.get(f"/api/jobs/{ids[2]['id']}").json()["position"] == 2
    client.post(f"/api/jobs/{ids[2]['id']}/cancel")  # queued: at once
    assert client.get(f"/api/jobs/{ids[2]['id']}").json()["state"] == "cancelled"
    assert client.get(f"/api/jobs/{ids[1]['id']}").json()["position"] == 1
    client.post(f"/api/jobs/{ids[0]['id']}/cancel")  # running: within a step
    first = wait(client, ids[0]["id"])
    assert first["state"] == "cancelled" and first["step"] < 200
    client.post(f"/api/jobs/{ids[1]['id']}/cancel")
    assert wait(client, ids[1]["id"])["state"] == "cancelled"
    assert run(client, FAST)["state"] == "done"  # and the queue goes on


@pytest.mark.parametrize("action", ["generate", "vary"])
def test_progress_and_previews_stream_as_events(client, action):
    body = {**FAST, "steps": 12, "count": 1}
    if action == "vary":
        body = {"kind": "vary", "grid": run(client, body)["result"]["id"], "n": 0}
    job = client.post("/api/jobs", json=body).json()
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as events:
        states = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: ")]
    assert states[-1]["state"] == "done"
    assert any(s.get("preview", "").startswith("data:image/png;base64,") for s in states)
    steps = [s["step"] for s in states]
    assert steps == sorted(steps) and steps[-1] > 2 and len(set(steps)) > 2


def test_a_failing_job_shows_one_line_and_the_server_goes_on(client, tmp_path):
    broken = tmp_path / "models" / "broken"  # listed (it has a model_index.json), fails to load inside the job
    broken.mkdir(parents=True)
    (broken / "model_index.json").write_text("{not json")
    assert "broken" in client.get("/api/models").json()["models"]
    failed = run(client, {**FAST, "model": "broken"})
    assert failed["state"] == "failed" and "\n" not in failed["error"] and "broken" in failed["error"], failed
    assert run(client, FAST)["state"] == "done"


@pytest.mark.parametrize("body, message", [
    ({"kind": "generate", "prompt": "x", "model": "../models/x"}, "no model"),
    ({"kind": "generate", "prompt": "x", "model": "/etc/passwd"}, "no model"),
    ({"kind": "generate", "prompt": "x", "adapters": [["../../secret.safetensors", 1]]}, "no adapter file"),
    ({"kind": "vary", "grid": "../outputs", "n": 0}, "not a grid id"),
    ({"kind": "vary", "grid": "/tmp", "n": 0}, "not a grid id"),
    ({"kind": "upscale", "grid": "nothing-here", "n": 0}, "no grid"),
    ({"kind": "generate", "prompt": "x", "steps": 0}, "steps"),
    ({"kind": "generate", "prompt": "x", "count": 100}, "count"),
    ({"kind": "generate", "prompt": "x", "guidance": "lots"}, "guidance"),
    ({"kind": "generate", "prompt": "x", "sampler": "magic"}, "sampler"),
    ({"kind": "delete everything"}, "not a job"),
    ({"kind": "inpaint", "grid": "{grid}", "n": 0, "mask": "http://elsewhere/x.png"}, "data URL"),
    ({"kind": "inpaint", "grid": "{grid}", "n": 5, "mask": "x"}, "numbered 0 to 1"),
])
def test_bad_requests_are_one_line_errors(client, body, message):
    grid = run(client, FAST)["result"]["id"]
    body = {k: v.format(grid=grid) if isinstance(v, str) else v for k, v in body.items()}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text
    assert "\n" not in response.json()["error"]


@pytest.mark.parametrize("path", ["/api/images/x/..%2F..%2Fgrid.json", "/api/images/..%2F..%2Fetc/passwd",
                                  "/api/images/20261208/grid.json", "/static/..%2Fapp.py", "/api/jobs/nope"])
def test_nothing_outside_the_outputs_is_served(client, path):
    assert client.get(path).status_code in (400, 404)


def test_uploads_are_limited_in_size_and_type_and_become_a_grid(client):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, format="PNG")
    grid = client.post("/api/uploads", content=buffer.getvalue()).json()
    assert run(client, {"kind": "upscale", "grid": grid["id"], "n": 0})["state"] == "done"
    assert "not an image" in client.post("/api/uploads", content=b"#!/bin/sh\nrm -rf /").json()["error"]
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    assert "accepted: PNG" in client.post("/api/uploads", content=tiff.getvalue()).json()["error"]
    assert "over 4 MB" in client.post("/api/uploads", content=b"0" * (UPLOAD_BYTES + 2**17)).json()["error"]


def test_an_adapter_file_from_the_models_folder_is_picked_with_its_scale(client, tmp_path):
    from latentlab.adapters import add_lora, lora_layers
    from latentlab.pipeline import Pipeline

    pipe = Pipeline.load(device="cpu")
    add_lora(pipe.unet, "made", rank=2, alpha=4.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in lora_layers(pipe.unet):
            for p in (layer.lora_A["made"].weight, layer.lora_B["made"].weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    (tmp_path / "models" / "lora").mkdir(parents=True)
    pipe.save_lora(tmp_path / "models" / "lora" / "style.safetensors", "made")
    assert client.get("/api/models").json()["adapters"] == ["style.safetensors"]
    plain = run(client, FAST)
    styled = run(client, {**FAST, "adapters": [["style.safetensors", 0.8]]})
    assert styled["state"] == "done", styled
    record = next(g for g in client.get("/api/history").json()["grids"] if g["id"] == styled["result"]["id"])
    assert record["adapters"] == [["style.safetensors", 0.8]]
    images = [client.get(f"/api/images/{job['result']['id']}/{job['result']['images'][0]}").content
              for job in (plain, styled)]
    assert images[0] != images[1]


def test_a_damaged_grid_record_leaves_the_rest_of_the_history(client, tmp_path):
    done = run(client, FAST)
    damaged = tmp_path / "outputs" / "20000101-000000-0001"
    damaged.mkdir()
    (damaged / "grid.json").write_text("{not json")
    assert [g["id"] for g in client.get("/api/history").json()["grids"]] == [done["result"]["id"]]


def test_an_unclip_model_draws_and_varies_from_the_page(client):
    grid = run(client, {**FAST, "model": "shapes-unclip", "count": 1})
    assert grid["state"] == "done", grid
    job = client.post("/api/jobs", json={"kind": "vary", "grid": grid["result"]["id"], "n": 0}).json()
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as events:
        states = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: ")]
    assert states[-1]["state"] == "done" and len(states[-1]["result"]["images"]) == 4
    assert any("preview" in s for s in states)


def test_serve_without_its_extra_says_how_to_get_it_in_one_line(monkeypatch, tmp_path, capsys):
    import sys

    from latentlab.cli import main

    from ..cli.commandline import assert_one_line_error

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    assert main(["serve", "--outputs", str(tmp_path / "out"), "--models", str(tmp_path / "models")]) == 2
    assert_one_line_error(capsys, "pip install 'latentlab[serve]'", "uvicorn")
    assert not (tmp_path / "out").exists()
