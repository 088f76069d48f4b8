"""What every fuzz property asserts, and the strategies they draw from.

The promise: bad input ends in a one-line LatentlabError (the CLI: `latentlab: error: ...` and exit
status 2), good input in a correct result; never a traceback, never a changed input file.

Budgets: each property runs `max_examples` derandomized examples (the same ones on every machine, until
its source changes: hypothesis seeds them from the test); `@example`s pin the reproductions of defects
found before. LATENTLAB_FUZZ_EXAMPLES=N runs N examples of every property instead (e.g. 1000, locally;
the training properties cost seconds an example).

Integers drawn for sizes avoid 65 .. 2**40: a value there can make a defect allocate gigabytes before it
fails (a machine running out of memory); the huge ones (2**40 and beyond) fail at the allocation at once.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from latentlab.cli import main
from latentlab.errors import LatentlabError
from latentlab.pipeline import Pipeline

EXAMPLES = os.environ.get("LATENTLAB_FUZZ_EXAMPLES")


def fuzz(examples: int, *, shrink: bool = True):
    """Settings for a property: deterministic, no example database, no deadline, `examples` examples
    (LATENTLAB_FUZZ_EXAMPLES overrides); `shrink=False` for properties whose every example is seconds
    of training (their examples are already minimal: one option, one value)."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=int(EXAMPLES) if EXAMPLES else examples, derandomize=True, database=None,
                    deadline=None, phases=phases, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


# ---------------------------------------------------------------------- the promise


def assert_one_line(error: BaseException) -> None:
    """A LatentlabError (CheckpointError included) whose message is one non-empty line."""
    assert isinstance(error, LatentlabError), f"{type(error).__name__} is not a LatentlabError: {error}"
    message = str(error)
    assert message.strip() and "\n" not in message and "\r" not in message, f"not one line: {message!r}"


def attempt(call, *args, **kwargs):
    """(result, None), or (None, the LatentlabError) after checking it is one line. Any other exception
    propagates: it is the traceback a user would see, and fails the property."""
    try:
        return call(*args, **kwargs), None
    except LatentlabError as e:
        assert_one_line(e)
        return None, e


def run_cli(argv: list) -> tuple[int, str, str]:
    """`latentlab ARGV` in this process: (exit status, stdout, stderr). An exception escaping main() is a
    traceback; the status must be 0 or 2, and with 2 stderr must hold one error line (`assert_cli_error`).
    The streams encode as a process's do in a UTF-8 locale: stdout strictly, stderr with backslash escapes."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in argv])
    out, err = out.getvalue().decode(), err.getvalue().decode()
    assert code in (0, 2), f"exit status {code}: {err[-2000:]}"
    if code == 2:
        assert_cli_error(err)
    return code, out, err


def assert_cli_error(err: str) -> None:
    """One error, on a whole line of its own that starts with `latentlab: error: ` (so that `grep
    '^latentlab: error:'` finds it); progress bars and `skipped ...` lines may come before or after it."""
    lines = err.split("\n")
    errors = [i for i, line in enumerate(lines) if "latentlab: error:" in line]
    assert len(errors) == 1, f"{len(errors)} error lines: {err[-1000:]!r}"
    line = lines[errors[0]]
    assert line.startswith("latentlab: error: "), f"the error does not start its own line: {line[-300:]!r}"
    assert "\r" not in line and errors[0] < len(lines) - 1, f"the error shares its line: {line[-300:]!r}"


def assert_cli_alone(err: str) -> None:
    """An error found before any work: stderr is that one line and nothing else."""
    assert err.count("\n") == 1 and err.startswith("latentlab: error: "), f"not one line: {err[-500:]!r}"


# ---------------------------------------------------------------------- unchanged files and modules


def snapshot(path: str | Path) -> dict[str, str]:
    """{relative path: sha256} of a file, or of every file and folder under a folder (hidden ones too)."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    found = {}
    for p in sorted(path.rglob("*")):
        relative = p.relative_to(path).as_posix()
        found[relative] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
    return found


@contextlib.contextmanager
def unchanged(*paths: str | Path):
    """Assert that the files and folders `paths` hold the same files with the same bytes afterwards."""
    before = [snapshot(p) for p in paths]
    yield
    for path, was in zip(paths, before):
        assert_as_before(path, was)


def assert_as_before(path: str | Path, was: dict[str, str]) -> None:
    """`path` holds what `snapshot(path)` found before."""
    now = snapshot(path)
    assert now.keys() == was.keys(), f"{path}: files added {sorted(now.keys() - was.keys())[:5]}, removed " \
                                     f"{sorted(was.keys() - now.keys())[:5]}"
    changed = sorted(k for k in now if now[k] != was[k])
    assert not changed, f"{path}: files changed {changed[:5]}"


@contextlib.contextmanager
def scratch():
    """A fresh empty folder for one example, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="latentlab-fuzz-") as folder:
        yield Path(folder)


def assert_generates(pipe: Pipeline, prompt: str = "a red circle", **options) -> torch.Tensor:
    """A loaded pipeline is a correct one if it draws finite images (one step; at most 64 px, for time)."""
    size = options.pop("size", None) or (pipe.image_size if pipe.image_size <= 64 else 32)
    images = pipe.sample([prompt], steps=options.pop("steps", 1), size=size, **options)
    assert images.shape == (1, 3, size, size), images.shape
    assert torch.isfinite(images).all(), "the images are not finite (NaN or inf: black PNGs)"
    return images


def copy_pipeline(pipe: Pipeline) -> Pipeline:
    """A pipeline of its own networks (the tokenizer and the autoencoder, which LoRA leaves alone, shared)."""
    return Pipeline(tokenizer=pipe.tokenizer, text_encoder=copy.deepcopy(pipe.text_encoder),
                    unet=copy.deepcopy(pipe.unet), vae=pipe.vae, diffusion=pipe.diffusion, image_size=pipe.image_size)


class ModuleState(list):
    """[(module tree, state dict)], printed short in failure reports."""

    def __repr__(self) -> str:
        return f"<the state of {len(self)} modules>"


def module_state(*modules: torch.nn.Module) -> ModuleState:
    """Everything a failed load must leave as it was: each module's tree (names and types) and its
    state dict (cloned)."""
    return ModuleState(([(n, type(m).__name__) for n, m in module.named_modules()],
                        {k: v.detach().clone() for k, v in module.state_dict().items()}) for module in modules)


def assert_same_state(before, after) -> None:
    for (tree, state), (tree_now, state_now) in zip(before, after):
        assert tree_now == tree, f"the module tree changed: {sorted(set(tree_now) ^ set(tree))[:5]}"
        assert state_now.keys() == state.keys(), f"state keys changed: {sorted(state_now.keys() ^ state.keys())[:5]}"
        changed = [k for k in state if not torch.equal(state[k], state_now[k])]
        assert not changed, f"weights changed: {changed[:5]}"


# ---------------------------------------------------------------------- values


HUGE = [2**40, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -2**63, -2**31]
ints = st.integers(-3, 64) | st.sampled_from(HUGE)
floats = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300, 5e-324])
strings = st.text(max_size=12) | st.sampled_from(["", " ", "32", "1e3", "nan", "None", "null", "true", "\udce9",
                                                  "latentlab", "linear", "eps"])
scalars = st.none() | st.booleans() | ints | floats | strings
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)

# any text: lone surrogates (how Python passes bytes that are not UTF-8), control characters, bidi marks
any_char = st.characters(codec=None, exclude_categories=()) | st.sampled_from(
    ["\udce9", "\udcff", "\ud800", "\x00", "\r", "\n", "\t", "\x1b", "\u202e", "\ufeff", "\u0301", "\U0001f600"])


def chars(min_size=0, max_size=None):
    """Strings of `any_char` (st.text drops the surrogates of an alphabet made of several strategies)."""
    return st.lists(any_char, min_size=min_size, max_size=max_size).map("".join)


any_text = chars(max_size=40) | st.builds(lambda s, n: s * n, chars(1, 4), st.integers(50, 5000))

# what a user might type for a number
NUMBER_WORDS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "0", "-0", "0.0", "-1", "1",
                "2", "0.5", "1e-30", "3.", ".5", "1_000", "0x10", "1e3", " 2 ", "+3", "٣", "²", "", " ", "abc",
                "1,2", "18446744073709551616", "-9223372036854775809", "4294967296", "1e2147483648"]
numbers = (st.sampled_from(NUMBER_WORDS) | ints.map(str) | floats.map(repr) | st.integers().map(str)
           | st.text(max_size=6))
# numbers for options whose large values cost time or memory (sizes, counts): no unbounded integers
small_numbers = st.sampled_from(NUMBER_WORDS) | ints.map(str) | floats.map(repr) | st.text(max_size=6)


def is_non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except (ValueError, OverflowError):
        return False


# ---------------------------------------------------------------------- described inputs


class Described(bytes):
    """File contents that print as how they were made: a failure report shows the mutation, not 4 MB."""

    def __new__(cls, data: bytes, what: str):
        self = super().__new__(cls, data)
        self.what = what
        return self

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {self.what}>"


class Labelled:
    """A drawn value that prints as its description (`value` holds it)."""

    def __init__(self, value, what: str):
        self.value, self.what = value, what

    def __repr__(self) -> str:
        return self.what


class Quiet(dict):
    """A fixture's dict of large values, printed short in failure reports."""

    def __repr__(self) -> str:
        return f"<{', '.join(map(str, self))}>"


def short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


# ---------------------------------------------------------------------- JSON documents


def json_paths(value, prefix=(), depth=4):
    """Every path into a JSON document, to containers and leaves, down to `depth`."""
    paths = [prefix]
    if depth and isinstance(value, dict):
        for k in value:
            paths += json_paths(value[k], prefix + (k,), depth - 1)
    elif depth and isinstance(value, list):
        for i, v in enumerate(value):
            paths += json_paths(v, prefix + (i,), depth - 1)
    return paths


@st.composite
def edited_json(draw, document, values=json_values):
    """(the document with one edit: a value replaced by one of `values`, a key dropped or added, or the whole
    document replaced; what was done)."""
    document = copy.deepcopy(document)
    paths = [p for p in json_paths(document) if p]
    edit = draw(st.sampled_from(["replace", "replace", "drop", "add", "whole"]))
    if edit == "whole" or not paths:
        value = draw(values)
        return value, f"the whole document -> {short(value)}"
    path = draw(st.sampled_from(paths))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    where = "/".join(map(str, path))
    if edit == "replace":
        parent[path[-1]] = value = draw(values)
        return document, f"{where} -> {short(value)}"
    if edit == "drop":
        del parent[path[-1]]
        return document, f"{where} dropped"
    value = draw(values)
    if isinstance(parent, dict):
        key = draw(st.text(max_size=10))
        parent[key] = value
        return document, f"{where[:where.rfind('/') + 1]}{key!r} added: {short(value)}"
    parent.append(value)
    return document, f"{where[:where.rfind('/')]} appended {short(value)}"


@st.composite
def edited_json_bytes(draw, document, values=json_values):
    """JSON text of an edited document, or bytes that are not JSON (cut short, not UTF-8, junk)."""
    kind = draw(st.sampled_from(["edit"] * 6 + ["truncated", "not utf-8", "junk"]))
    text = json.dumps(document, indent=2).encode()
    if kind == "truncated":
        at = draw(st.integers(0, len(text) - 1))
        return Described(text[:at], f"cut to {at} bytes")
    if kind == "not utf-8":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80"]))
        return Described(text[:at] + junk + text[at:], f"{junk!r} inserted at {at}")
    if kind == "junk":
        junk = draw(st.binary(max_size=40))
        return Described(junk, f"only {junk!r}")
    edited, what = draw(edited_json(document, values))
    return Described(json.dumps(edited).encode(), what)


# ---------------------------------------------------------------------- safetensors files


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """(header, data buffer) of a safetensors file's bytes."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header: bytes, body: bytes, pad: bool = True) -> bytes:
    if pad:
        header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + body


DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3",
          "F8_E5M2", "C64", "", "f32", "float32"]
SAME_SIZE = {"F32": "I32", "F16": "I16", "BF16": "I16", "F64": "I64"}


@st.composite
def mutated_safetensors(draw, data: bytes, metadata_values=None) -> Described:
    """A safetensors file's bytes with one mutation: bytes flipped, cut short, a wrong length prefix, a
    header that is not UTF-8, every weight stored as integers, or the JSON header edited
    (dtypes, shapes, offsets, tensors dropped, added or renamed, __metadata__ of odd types);
    `metadata_values` draws more strings for __metadata__ entries."""
    header, body = split_safetensors(data)
    n = len(data) - len(body) - 8
    kind = draw(st.sampled_from(["flip", "truncate", "length", "not utf-8", "integers"] + ["header"] * 6))
    if kind == "flip":  # in the length prefix and the header: the data's values are not the header's business
        out, flips = bytearray(data), []
        for at in draw(st.lists(st.integers(0, n + 7), min_size=1, max_size=4)):
            flips.append((at, draw(st.integers(1, 255))))
            out[at] ^= flips[-1][1]
        return Described(out, f"bytes xor-ed (position, mask): {flips}")
    if kind == "truncate":
        at = draw(st.integers(0, n + 16) | st.integers(0, len(data) - 1))
        return Described(data[:at], f"cut to {at} bytes (header {n})")
    if kind == "length":
        value = draw(st.sampled_from([0, 1, 2, n - 1, n + 1, n + 8, len(data), 2**31, 2**63, 2**64 - 1])
                     | st.integers(0, 2**64 - 1))
        return Described(struct.pack("<Q", value) + data[8:], f"length prefix {value} (header {n})")
    if kind == "not utf-8":
        at, junk = draw(st.integers(0, n - 1)), draw(st.sampled_from([b"\xff", b"\xe9", b"\x80", b"\xc0"]))
        raw = data[8:8 + n]
        return Described(data[:8] + raw[:at] + junk + raw[at + 1:] + body, f"header byte {at} -> {junk!r}")
    if kind == "integers":
        return stored_as_integers(data)
    names = sorted(k for k in header if k != "__metadata__")
    header, what = draw(edited_header(header, names, len(body), metadata_values))
    pad = draw(st.booleans())
    return Described(join_safetensors(json.dumps(header).encode(), body, pad=pad),
                     f"header: {what}{'' if pad else ', unpadded'}")


def stored_as_integers(data: bytes) -> Described:
    """The file with every floating-point tensor's dtype an integer one of the same size (the data still fits)."""
    header, body = split_safetensors(data)
    for name, entry in header.items():
        if name != "__metadata__":
            entry["dtype"] = SAME_SIZE.get(entry["dtype"], entry["dtype"])
    return Described(join_safetensors(json.dumps(header).encode(), body), "every float dtype -> an integer one")


@st.composite
def edited_header(draw, header: dict, names: list[str], size: int, metadata_values=None):
    """(a safetensors header with one edit, what was done)."""
    header = copy.deepcopy(header)
    edit = draw(st.sampled_from(["dtype", "shape", "offsets", "drop field", "extra field", "drop tensor",
                                 "extra tensor", "rename", "metadata", "metadata entry", "whole"]))
    offsets = st.sampled_from([0, 1, size - 1, size, size + 1, 2**63, 2**64 - 1, -1]) | st.integers(0, size + 8)
    if not names or edit == "whole":
        value = draw(json_values)
        return value, f"the whole header -> {short(value)}"
    name = draw(st.sampled_from(names))
    if edit in ("dtype", "shape", "offsets"):
        field = {"offsets": "data_offsets"}.get(edit, edit)
        value = draw({"dtype": st.sampled_from(DTYPES) | json_values, "shape": st.lists(ints, max_size=5) | json_values,
                      "offsets": st.lists(offsets, max_size=3) | json_values}[edit])
        header[name][field] = value
        return header, f"{name}.{field} -> {short(value)}"
    if edit == "drop field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        del header[name][field]
        return header, f"{name}.{field} dropped"
    if edit == "extra field":
        key, value = draw(st.text(max_size=10)), draw(json_values)
        header[name][key] = value
        return header, f"{name}.{key!r} added: {short(value)}"
    if edit == "drop tensor":
        del header[name]
        return header, f"{name} dropped"
    if edit == "extra tensor":
        entry = st.fixed_dictionaries({"dtype": st.sampled_from(DTYPES), "shape": st.lists(ints, max_size=3),
                                       "data_offsets": st.lists(offsets, min_size=2, max_size=2)})
        key, value = draw(st.text(max_size=20)), draw(entry | json_values)
        header[key] = value
        return header, f"tensor {key!r} added: {short(value)}"
    if edit == "rename":
        key = draw(st.text(max_size=20) | st.sampled_from([n + ".x" for n in names[:3]]))
        header[key] = header.pop(name)
        return header, f"{name} renamed {key!r}"
    if edit == "metadata":
        value = draw(json_values)
        header["__metadata__"] = value
        return header, f"__metadata__ -> {short(value)}"
    metadata = header.setdefault("__metadata__", {})
    keys = sorted(metadata) if isinstance(metadata, dict) else []
    key = draw(st.sampled_from(keys) | st.text(max_size=10)) if keys else draw(st.text(max_size=10))
    extra = st.nothing() if metadata_values is None else metadata_values
    value = draw(extra | json_values.map(json.dumps) | json_values)
    metadata[key] = value
    return header, f"__metadata__[{key!r}] -> {short(value)}"
