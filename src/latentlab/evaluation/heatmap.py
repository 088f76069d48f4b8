"""An accuracy matrix drawn as a PNG heatmap, with PIL alone.

Entry (i, j) is a fraction in [0, 1] (or None: not measured), drawn as a square cell whose colour runs from
dark blue-purple (0) through teal to bright yellow (1), viridis's ramp: lightness rises steadily along it, so
order reads the same in grey and to colour-blind eyes, and no middle value stands out as a rainbow's would. The
value is written in the cell as a whole percentage ("87%"), white on dark cells and black on bright ones; row
labels stand on the left, column labels on top (turned upright where wider than a cell), a title above.

Rows may be shorter than the columns and missing entries are left blank: continual learning's matrix of
"accuracy on concept j after task k" (evaluation/continual.py) is lower-triangular.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import LatentlabError

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
# viridis at 0, 1/4, 1/2, 3/4 and 1 (matplotlib's table), interpolated linearly between the stops
RAMP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
PAD = 6  # pixels between labels and cells, and around the figure


def ramp(value: float) -> tuple[int, int, int]:
    """The cell colour of a fraction in [0, 1]."""
    x = min(max(value, 0.0), 1.0) * (len(RAMP) - 1)
    k = min(int(x), len(RAMP) - 2)
    t = x - k
    return tuple(round(a + (b - a) * t) for a, b in zip(RAMP[k], RAMP[k + 1]))


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever stands out more on `colour` (by its Rec. 709 luma)."""
    r, g, b = colour
    return INK if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else BACKGROUND


def _check(matrix, rows, columns) -> None:
    if len(matrix) != len(rows):
        raise LatentlabError(f"the matrix has {len(matrix)} rows but {len(rows)} row labels; give one label a row")
    for i, row in enumerate(matrix):
        if len(row) > len(columns):
            raise LatentlabError(f"row {i} has {len(row)} entries but there are {len(columns)} columns; accepted: "
                                 f"at most one entry a column")
        for value in row:
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise LatentlabError(f"row {i} holds {value!r}; accepted: fractions in [0, 1] or None")


def _text(text: str, font, fill=INK) -> Image.Image:
    """`text` on its own transparent image, tight to its width; its height is that of the font's tallest letters
    and deepest descenders, so that labels of one kind share their baseline and their height."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, _, right, _ = measure.textbbox((0, 0), text, font=font)
    _, top, _, bottom = measure.textbbox((0, 0), f"Ag|%{text}", font=font)
    image = Image.new("RGBA", (max(right - left, 1), max(bottom - top, 1)), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((-left, -top), text, font=font, fill=fill)
    return image


def accuracy_heatmap(matrix, rows, columns, path: str | Path, *, title: str = "", cell: int = 48) -> Path:
    """Draw `matrix` (a list of rows of fractions in [0, 1] or None, each at most len(columns) long) as a PNG
    heatmap at `path` (module docstring): one `cell`-pixel square an entry, `rows` labelling the rows on the left,
    `columns` the columns on top, `title` above. Returns the path."""
    _check(matrix, rows, columns)
    if cell < 24:
        raise LatentlabError(f"a cell of {cell} pixels cannot hold its percentage; accepted: 24 or more")
    font = ImageFont.load_default()
    row_labels = [_text(str(label), font) for label in rows]
    column_labels = [_text(str(label), font) for label in columns]
    if any(label.width > cell - 2 for label in column_labels):  # upright, reading upwards
        column_labels = [label.rotate(90, expand=True) for label in column_labels]
    heading = _text(title, font) if title else None
    left = PAD + max((label.width for label in row_labels), default=0) + PAD
    top = PAD + (heading.height + PAD if heading else 0) + max((label.height for label in column_labels), default=0)
    top += PAD
    width = max(left + cell * len(columns), PAD + (heading.width if heading else 0)) + PAD
    image = Image.new("RGB", (width, top + cell * len(rows) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if heading:
        image.paste(heading, (PAD, PAD), heading)
    for j, label in enumerate(column_labels):
        image.paste(label, (left + j * cell + (cell - label.width) // 2, top - PAD - label.height), label)
    for i, (label, row) in enumerate(zip(row_labels, matrix)):
        y = top + i * cell
        image.paste(label, (left - PAD - label.width, y + (cell - label.height) // 2), label)
        for j, value in enumerate(row):
            if value is None:
                continue
            x, colour = left + j * cell, ramp(value)
            draw.rectangle((x, y, x + cell - 2, y + cell - 2), fill=colour)  # a 2-pixel gutter between cells
            text = _text(f"{math.floor(value * 100 + 0.5)}%", font, _ink(colour))
            image.paste(text, (x + (cell - 1 - text.width) // 2, y + (cell - 1 - text.height) // 2), text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
