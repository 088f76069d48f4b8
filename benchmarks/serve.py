"""The page on the CPU: seconds from pressing Generate (the page's POST /api/jobs, with the page's defaults: the
shipped model, 4 images, DDIM 50 steps) to the first preview and to the grid, through a real server on this machine
(uvicorn, HTTP, the event stream the page reads). The model is loaded by a first, untimed request, as it stays loaded
in a running server. Issue 24's goal: the first image within 3 seconds on 2 cores.

    python benchmarks/serve.py --out records/serve [--runs 5] [--threads 2]

Needs the `serve` extra (fastapi, uvicorn) and httpx.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


def start_server(library_root: Path):
    import uvicorn

    from latentlab.server.app import create_app
    from latentlab.server.library import Library
    from latentlab.server.studio import Studio

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    library = Library(library_root / "models", library_root / "outputs")
    server = uvicorn.Server(uvicorn.Config(create_app(library, Studio(library, "cpu")), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def press_generate(client, url: str, body: dict) -> dict:
    """One press: seconds to the request's answer, the first preview, and the grid (the job done)."""
    start = time.perf_counter()
    job = client.post(f"{url}/api/jobs", json=body).json()
    times = {"accepted": time.perf_counter() - start}
    with client.stream("GET", f"{url}/api/jobs/{job['id']}/events", timeout=600) as events:
        for line in events.iter_lines():
            if not line.startswith("data: "):
                continue
            state = json.loads(line[6:])
            if "preview" in state and "first preview" not in times:
                times["first preview"] = time.perf_counter() - start
            if state["state"] in ("done", "failed", "cancelled"):
                times["grid"] = time.perf_counter() - start
                times["state"] = state["state"]
                return times
    raise RuntimeError("the event stream ended before the job did")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import httpx
    import torch

    torch.set_num_threads(args.threads)
    body = {"kind": "generate", "prompt": "a small purple circle to the left of a large green square",
            "model": "shapes-default", "sampler": "ddim", "steps": 50, "guidance": 4.0, "count": 4, "seed": 0}
    with tempfile.TemporaryDirectory() as root:
        server, url = start_server(Path(root))
        with httpx.Client() as client:
            warm = press_generate(client, url, body)  # loads the model, as a running server already has
            runs = [press_generate(client, url, {**body, "seed": 10 * (i + 1)}) for i in range(args.runs)]
        server.should_exit = True
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__},
              "request": body, "first request (loads the model)": warm, "runs": runs,
              "median seconds": {key: statistics.median(r[key] for r in runs)
                                 for key in ("accepted", "first preview", "grid")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median seconds"]))


if __name__ == "__main__":
    main()
