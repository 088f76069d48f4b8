"""Clips out of a video model (video_pipeline.py): frames as PIL images -> an animated GIF, an H.264 MP4, or one
image of the frames side by side.

Each frame is enlarged `scale` times by nearest neighbour, so the pixels stay sharp. Files are encoded in memory
and written with `io.atomic_write`: a reader sees the old file or the new one, never half of one. MP4 needs PyAV
(`pip install 'latentlab[video]'`), imported only when one is written.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

from PIL import Image

from .errors import LatentlabError
from .images import image_grid
from .io import atomic_write

MP4_CODEC = "libx264"  # H.264, in yuv420p: what every player reads
MP4_CRF = 18  # x264's constant rate factor: 0 lossless .. 51 worst; 18 looks lossless on flat colours


def check_clip(frames: list[Image.Image], fps: float, scale: int) -> None:
    if not frames:
        raise LatentlabError("a clip needs at least one frame")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise LatentlabError(f"fps must be a number greater than 0, got {fps!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise LatentlabError(f"scale must be a positive whole number, got {scale!r}")


def enlarge(frame: Image.Image, scale: int) -> Image.Image:
    w, h = frame.size
    return frame.convert("RGB").resize((w * scale, h * scale), Image.NEAREST)


def frame_strip(frames: list[Image.Image], scale: int = 4) -> Image.Image:
    """The frames side by side, first on the left, each enlarged `scale` times."""
    check_clip(frames, 1, scale)
    return image_grid([frame.convert("RGB") for frame in frames], columns=len(frames), scale=scale)


def save_gif(frames: list[Image.Image], path: str | Path, fps: float = 8, scale: int = 4) -> None:
    """A looping animated GIF of the frames at `fps` frames a second, each enlarged `scale` times.

    GIF times frames in hundredths of a second, so 8 fps plays at 1 / 0.12 s = 8.3. A frame identical to the one
    before it is merged into it, the two durations added (Pillow does this): the clip plays the same."""
    check_clip(frames, fps, scale)
    images = [enlarge(frame, scale) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    atomic_write(path, buffer.getvalue())


def import_av():
    """PyAV, or a LatentlabError saying how to install it."""
    try:
        import av
    except ImportError:
        raise LatentlabError("writing MP4 needs PyAV, which is not installed: pip install 'latentlab[video]'") from None
    return av


def save_mp4(frames: list[Image.Image], path: str | Path, fps: float = 8, scale: int = 8) -> None:
    """An H.264 MP4 (yuv420p) of the frames at `fps` frames a second, each enlarged `scale` times; a side of odd
    length is padded by one black row or column, as yuv420p needs even sides."""
    check_clip(frames, fps, scale)
    av = import_av()
    w, h = frames[0].size
    width, height = even(w * scale), even(h * scale)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(MP4_CODEC, rate=Fraction(fps).limit_denominator(1001),
                                      options={"crf": str(MP4_CRF)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            image = Image.new("RGB", (width, height))
            image.paste(enlarge(frame, scale))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    atomic_write(path, buffer.getvalue())


def even(n: int) -> int:
    return n + n % 2
