"""The web page's server (`latentlab serve`): one page (static/) and a small JSON API over the job queue.

    GET  /                          the page
    GET  /api/models                models, adapter files and samplers to pick from
    POST /api/jobs                  {"kind": "generate", "prompt": ..., ...} -> {"id", "position"}
    GET  /api/jobs/{id}             the job's state
    GET  /api/jobs/{id}/events      the same as server-sent events, one per change (progress, preview, the end)
    POST /api/jobs/{id}/cancel      stop it (a running job within one step)
    POST /api/uploads               an image file as the body -> a grid of one image, to act on
    GET  /api/history               every grid written, newest first, with each image's settings
    GET  /api/images/{grid}/{file}  an image of a grid

Bad input is a 400 with {"error": one line}; a job that fails shows its line in its state, and the server goes
on. FastAPI and uvicorn are the optional extra `serve` (pip install 'latentlab[serve]').
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from ..diffusion import SAMPLERS
from ..errors import LatentlabError
from ..grid import Grid, GridImage
from ..images import from_pil
from ..pipeline import Pipeline
from .jobs import ENDED, Job, JobQueue
from .library import Library
from .studio import Studio

STATIC = Path(__file__).parent / "static"
UPLOAD_BYTES = 4 * 2**20  # the largest image or mask accepted
UPLOAD_TYPES = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
KINDS = ("generate", "vary", "upscale", "img2img", "inpaint")
MOST_IMAGES, MOST_STEPS = 16, 1000


def create_app(library: Library, studio: Studio | None = None) -> FastAPI:
    studio = studio or Studio(library)
    queue = JobQueue(studio.run)
    app = FastAPI(title="latentlab")
    app.state.queue, app.state.library = queue, library

    @app.exception_handler(LatentlabError)
    async def bad_input(request, error):
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, error):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where or 'the request'}: {first.get('msg', 'not valid')}"}, status_code=400)

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/static/{name}")
    def static(name: str):
        if name not in ("app.js", "style.css"):
            raise LatentlabError(f"no file {name[:60]!r}")
        return FileResponse(STATIC / name)

    @app.get("/api/models")
    def models():
        return {"models": library.models(), "adapters": library.adapters(), "samplers": list(SAMPLERS)}

    @app.post("/api/jobs")
    async def submit(request: Request):
        params = checked(await json_body(request), library)
        job = queue.submit(params.pop("kind"), params)
        return {"id": job.id, "position": queue.position(job)}

    @app.get("/api/jobs/{job_id}")
    def state(job_id: str):
        job = find(queue, job_id)
        return describe(job, queue)

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        job = find(queue, job_id)

        async def stream():
            seen = -1
            while True:
                if job.version != seen:
                    seen = job.version
                    yield f"data: {json.dumps(describe(job, queue, preview=True))}\n\n"
                    if job.state in ENDED:
                        return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        job = find(queue, job_id)
        queue.cancel(job)
        return describe(job, queue)

    @app.post("/api/uploads")
    async def upload(request: Request):
        data = await limited_body(request)
        grid = store_upload(data, library, queue)
        return {"id": grid.folder.name, "images": [i.file for i in grid.images]}

    @app.get("/api/history")
    def history():
        return {"grids": library.history()}

    @app.get("/api/images/{grid_id}/{name}")
    def image(grid_id: str, name: str):
        return FileResponse(library.file(grid_id, name), media_type="image/png")

    return app


# ------------------------------------------------------------------ requests


async def json_body(request: Request) -> dict:
    data = await limited_body(request)
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise LatentlabError(f"the request is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise LatentlabError("the request is a JSON object: {\"kind\": \"generate\", \"prompt\": ...}")
    return body


async def limited_body(request: Request) -> bytes:
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > UPLOAD_BYTES + 2**16:
            raise LatentlabError(f"the request is over {UPLOAD_BYTES // 2**20} MB; send a smaller image")
    return data


def checked(body: dict, library: Library) -> dict:
    """A job's parameters, each checked, with defaults filled in; a LatentlabError names the first bad one."""
    kind = body.get("kind")
    if kind not in KINDS:
        raise LatentlabError(f"kind {str(kind)[:40]!r} is not a job; accepted: {', '.join(KINDS)}")
    if kind == "generate":
        return generate_params(body, library)
    params = {"kind": kind, "grid": body.get("grid"), "n": whole(body.get("n"), "n", 0, 10**6)}
    library.grid(params["grid"]).image(params["n"])  # the grid and its image exist
    if kind in ("vary", "img2img", "inpaint"):
        if body.get("prompt"):
            params["prompt"] = prompt(body["prompt"], "prompt")
        if body.get("strength") is not None:
            params["strength"] = number(body["strength"], "strength", 0.0, 1.0)
    if kind == "inpaint":
        params["mask"] = data_url(body.get("mask"))
    return params


def generate_params(body: dict, library: Library) -> dict:
    library.model(body.get("model", "shapes-default"))
    adapters = body.get("adapters") or []
    if not isinstance(adapters, list) or not all(isinstance(a, list) and len(a) == 2 for a in adapters):
        raise LatentlabError("adapters is a list of [file, scale] pairs")
    for name, scale in adapters:
        library.adapter(name)
        number(scale, "an adapter's scale", -10.0, 10.0)
    sampler = body.get("sampler", "ddim")
    if sampler not in SAMPLERS:
        raise LatentlabError(f"sampler {str(sampler)[:40]!r} is unknown; accepted: {', '.join(SAMPLERS)}")
    seed = body.get("seed")
    return {"kind": "generate", "prompt": prompt(body.get("prompt", ""), "prompt"),
            "negative_prompt": prompt(body.get("negative_prompt", ""), "negative prompt"),
            "model": body.get("model", "shapes-default"), "adapters": adapters, "sampler": sampler,
            "steps": whole(body.get("steps", 50), "steps", 1, MOST_STEPS),
            "guidance": number(body.get("guidance", 4.0), "guidance", -100.0, 100.0),
            "seed": None if seed in (None, "random") else whole(seed, "seed", 0, Pipeline.MAX_SEED - MOST_IMAGES),
            "size": None if body.get("size") is None else whole(body["size"], "size", 8, 1024),
            "count": whole(body.get("count", 4), "count", 1, MOST_IMAGES)}


def prompt(text, what: str) -> str:
    if not isinstance(text, str):
        raise LatentlabError(f"the {what} is text")
    Pipeline.check_prompt(text, what)
    return text


def whole(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LatentlabError(f"{what} is {str(value)[:40]!r}; accepted: a whole number from {low} to {high}")
    return value


def number(value, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise LatentlabError(f"{what} is {str(value)[:40]!r}; accepted: a number from {low:g} to {high:g}")
    return float(value)


def data_url(value) -> bytes:
    """The bytes of a PNG data URL (a painted mask), limited in size."""
    head = "data:image/png;base64,"
    if not isinstance(value, str) or not value.startswith(head):
        raise LatentlabError("mask is a PNG data URL (data:image/png;base64,...), white where to redraw")
    try:
        data = base64.b64decode(value[len(head):], validate=True)
    except ValueError:
        raise LatentlabError("mask: its base64 does not decode") from None
    if len(data) > UPLOAD_BYTES:
        raise LatentlabError(f"mask is over {UPLOAD_BYTES // 2**20} MB")
    return data


def store_upload(data: bytes, library: Library, queue: JobQueue) -> Grid:
    """An uploaded image file as a grid of one image (32x32, as the shipped models draw), to act on."""
    import io

    from PIL import Image

    try:
        upload = Image.open(io.BytesIO(data))
        upload.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LatentlabError(f"the upload is not an image Pillow reads ({str(e)[:80]})") from None
    if upload.format not in UPLOAD_TYPES:
        raise LatentlabError(f"the upload is a {upload.format} image; accepted: {', '.join(UPLOAD_TYPES)}")
    image, _ = from_pil(upload, 32)
    folder = library.folder(f"{queue.new_id()}-upload")
    grid = Grid(folder=folder, model="shapes-default", images=[])
    grid.add(image[None], [GridImage("", "", 0, {"size": 32}, {"action": "upload"})])
    grid.save()
    return grid


def find(queue: JobQueue, job_id: str) -> Job:
    job = queue.jobs.get(job_id)
    if job is None:
        raise LatentlabError(f"no job {job_id[:60]!r}")
    return job


def describe(job: Job, queue: JobQueue, *, preview: bool = False) -> dict:
    state = {"id": job.id, "kind": job.kind, "state": job.state, "position": queue.position(job),
             "step": job.step, "steps": job.steps, "result": job.result, "error": job.error}
    if preview and job.preview is not None:
        state["preview"] = "data:image/png;base64," + base64.b64encode(job.preview).decode()
    return state
