"""Writing clips: a looping GIF of every frame, a strip of the frames side by side, an H.264 MP4 that PyAV reads."""

import sys

import pytest
from PIL import Image

from latentlab.clips import frame_strip, save_gif, save_mp4
from latentlab.errors import LatentlabError

T = 8


def clip(width=32, height=32):
    """T frames, each a different colour, with a square that moves right."""
    frames = []
    for i in range(T):
        frame = Image.new("RGB", (width, height), (30 * i, 0, 255 - 30 * i))
        frame.paste((255, 255, 255), (2 * i, 4, 2 * i + 6, 10))
        frames.append(frame)
    return frames


def test_gif_holds_every_frame_enlarged_and_loops(tmp_path):
    save_gif(clip(), tmp_path / "clip.gif", fps=8, scale=3)
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.n_frames == T and gif.size == (96, 96)
        assert gif.info["loop"] == 0 and gif.info["duration"] == 120  # 1/8 s, in GIF's hundredths
        gif.seek(T - 1)
        assert gif.convert("RGB").getpixel((0, 95)) == clip()[-1].getpixel((0, 31))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # no temporary left


def test_strip_is_the_frames_side_by_side():
    frames = clip(32, 16)
    strip = frame_strip(frames, scale=2)
    assert strip.size == (T * 64, 32)
    for i, frame in enumerate(frames):
        assert strip.getpixel((i * 64 + 1, 1)) == frame.getpixel((0, 0))


@pytest.mark.parametrize("size, scale, dims", [((32, 32), 8, (256, 256)), ((33, 17), 1, (34, 18))])
def test_mp4_reads_back_with_every_frame_and_even_sides(tmp_path, size, scale, dims):
    av = pytest.importorskip("av", reason="the test extra installs it: pip install -e '.[test]'")
    save_mp4(clip(*size), tmp_path / "clip.mp4", fps=8, scale=scale)
    with av.open(str(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == "h264" and stream.average_rate == 8
    assert len(frames) == T and (frames[0].width, frames[0].height) == dims
    assert {f.format.name for f in frames} == {"yuv420p"}
    first, last = frames[0].to_image(), frames[-1].to_image()
    assert first.getpixel((dims[0] - 4, dims[1] - 4))[2] > 200 and last.getpixel((dims[0] - 4, dims[1] - 4))[0] > 180


def test_mp4_without_pyav_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(LatentlabError, match=r"pip install 'latentlab\[video\]'") as error:
        save_mp4(clip(), tmp_path / "clip.mp4")
    assert "\n" not in str(error.value) and not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("call, message", [
    (lambda path: save_gif([], path), "at least one frame"),
    (lambda path: save_gif(clip(), path, fps=0), "fps must be a number greater than 0"),
    (lambda path: save_mp4(clip(), path, scale=0), "scale must be a positive whole number"),
])
def test_bad_arguments_are_refused(tmp_path, call, message):
    with pytest.raises(LatentlabError, match=message):
        call(tmp_path / "clip")
