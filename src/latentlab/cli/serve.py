"""`latentlab serve`: the local web page (server/), bound to this machine unless told otherwise."""

from __future__ import annotations

from ..errors import LatentlabError
from .values import positive


def add_parser(commands) -> None:
    s = commands.add_parser("serve", help="a local web page: generate, vary, upscale, img2img, inpaint, history")
    s.add_argument("--models", default="models", help="folder of model folders and SD files, with lora/ for adapter "
                                                      "files (default %(default)s; the shipped models are always there)")
    s.add_argument("--outputs", default="outputs", help="folder the page's grids and history go to (default %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    s.add_argument("--port", type=positive(int), default=7860, help="port (default %(default)s)")
    s.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    s.set_defaults(func=run)


def run(args) -> None:
    try:
        import uvicorn

        from ..server.app import create_app
    except ImportError as e:
        raise LatentlabError(f"serve needs the optional extra: pip install 'latentlab[serve]' ({e.name} is missing)") \
            from None
    from ..server.library import Library
    from ..server.studio import Studio
    from .output import check_out

    check_out(args.outputs, folder=True)
    library = Library(args.models, args.outputs)
    print(f"latentlab: serving http://{args.host}:{args.port}/ (models from {library.models_dir}, outputs to "
          f"{library.outputs})", flush=True)
    uvicorn.run(create_app(library, Studio(library, args.device)), host=args.host, port=args.port, log_level="warning")
