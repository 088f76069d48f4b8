"""The CLIP text tokenizer (Radford et al. 2021): lower-cased, byte-level BPE with an end-of-word suffix.

The vocabulary is OpenAI's: `clip_tokenizer()` derives it from the merges file shipped in
`latentlab/assets/bpe_simple_vocab_16e6.txt.gz` (the 256 byte symbols in GPT-2's bytes_to_unicode
order, the same 256 with `</w>`, one entry per merge, then `<|startoftext|>` and `<|endoftext|>`:
49,408 entries); `clip_tokenizer_from_files()` reads a diffusers-format `tokenizer/` folder's
vocab.json and merges.txt instead. Both build the same `tokenizers` pipeline, whose ids match the
slow, pure-Python `CLIPTokenizer` of transformers 4.x as it runs without ftfy installed (the
tokenizer Stable Diffusion 1.x was trained with): its text clean-up (control characters dropped,
whitespace collapsed, CJK ideographs split apart, NFC, Python's `str.lower`, final sigma included),
its word regex and its BPE. Sequences are `<|startoftext|> tokens <|endoftext|>`, truncated to
`max_length` keeping both, and padded with `<|endoftext|>` (id 49407), as Stable Diffusion 1.x does.

Known limits, all outside ordinary prompts: a mixed-case `<|ENDOFTEXT|>` typed straight after a
punctuation character becomes the special token here but byte pieces in transformers; characters
assigned in a newer Unicode version than the one this Python's `unicodedata` knows may be classed
differently by the Rust and Python Unicode tables; lone surrogates are rejected.
"""

from __future__ import annotations

import functools
import gzip
import json
import unicodedata
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as _Tokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from ..errors import CheckpointError, LatentlabError
from .tokenizer import Tokenizer

__all__ = ["BOS", "EOS", "VOCAB_SIZE", "bytes_to_unicode", "clip_tokenizer", "clip_tokenizer_from_files"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894: lines[1:49152-256-2+1] of OpenAI's merges file
ASSET = "assets/bpe_simple_vocab_16e6.txt.gz"

# CLIP's word regex, case-insensitive as transformers compiles it (so 's also matches 'ſ), with CJK ideographs (BERT's
# "Chinese characters", which transformers' BasicTokenizer surrounds with spaces) out of the letter runs, one a word.
_CJK = (r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}")
WORDS = (r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
         rf"[{_CJK}]|[\p{{L}}&&[^{_CJK}]]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+")
# Python's str.lower maps a capital sigma that ends a word to the final form; Rust's per-character lowercase does not.
# Final: the nearest character on its left that is not case-ignorable is cased, and the nearest on its right is not.
_CASED = r"[\p{Cased}&&\P{Case_Ignorable}]"
_FINAL_SIGMA = rf"(?<={_CASED}\p{{Case_Ignorable}}*)\x{{03A3}}(?!\p{{Case_Ignorable}}*{_CASED})"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters, in its order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _char_class(codepoints: list[int]) -> str:
    """A regex character class of the given (sorted) code points, as ranges."""
    ranges: list[tuple[int, int]] = []
    for cp in codepoints:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "[" + "".join(rf"\x{{{a:X}}}" if a == b else rf"\x{{{a:X}}}-\x{{{b:X}}}" for a, b in ranges) + "]"


@functools.lru_cache(maxsize=1)
def _cleanup_classes() -> tuple[str, str]:
    """(dropped, whitespace) character classes of transformers' BasicTokenizer, from this Python's unicodedata.

    Dropped: NUL, U+FFFD and every category C* character but tab, newline and carriage return. Whitespace: what is
    left of `str.isspace` (Zs, U+2028, U+2029), which the BasicTokenizer splits words on. Surrogates are left out:
    they cannot reach the Rust side.
    """
    dropped, space = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if cp in (0, 0xFFFD) or (unicodedata.category(ch)[0] == "C" and ch not in "\t\n\r"):
            dropped.append(cp)
        elif ch.isspace():
            space.append(cp)
    return _char_class(dropped), _char_class(space)


def _build(vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int, source: str) -> Tokenizer:
    """The CLIP pipeline over a vocabulary and its ranked merges; `source` names the files in errors."""
    if max_length < 2:
        raise LatentlabError(f"max_length must be at least 2 (start and end tokens), got {max_length}")
    for special in (BOS, EOS):
        if special not in vocab:
            raise CheckpointError(f"{source}: the vocabulary has no {special} entry; expected a CLIP vocabulary")
    for i, (a, b) in enumerate(merges):
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise CheckpointError(f"{source}: merge {i + 1} ({a} {b}) uses or makes a symbol missing from the "
                                  "vocabulary; expected a CLIP vocabulary and its merges")
    try:
        bpe = models.BPE(vocab, merges, dropout=None, unk_token=EOS, continuing_subword_prefix="",
                         end_of_word_suffix=SUFFIX, fuse_unk=False)
    except Exception as e:  # the tokenizers library's own checks
        raise CheckpointError(f"{source}: not a valid BPE vocabulary and merges ({e})") from e
    tok = _Tokenizer(bpe)
    dropped, space = _cleanup_classes()
    tok.normalizer = normalizers.Sequence([  # transformers' BasicTokenizer(strip_accents=False, do_split_on_punc=False)
        normalizers.Replace(Regex(dropped), ""),
        normalizers.NFC(),
        normalizers.Replace(Regex(space + "+"), " "),
        normalizers.Replace(Regex(_FINAL_SIGMA), "\u03c2"),
        normalizers.Lowercase(),
        # U+0345 is in no branch of the case-insensitive word regex in the `regex` module, so transformers skips it
        normalizers.Replace("\u0345", " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(SUFFIX, " "), decoders.Strip(" ", 0, 1)])
    # matched after normalisation, as transformers matches them both in the raw text and among the regex's words
    tok.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in (BOS, EOS)])
    bos, eos = vocab[BOS], vocab[EOS]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} {EOS} $B {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=eos, pad_token=EOS)
    return Tokenizer(tok)


def _vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's vocabulary order: bytes, bytes with `</w>`, one symbol per merge, then the two special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + SUFFIX for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{ASSET}: two merges make the same symbol; expected OpenAI's CLIP merges")
    return vocab


def _parse_merges(lines: list[str], source: str) -> list[tuple[str, str]]:
    merges = []
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{source}: line {i + 2} is {line[:60]!r}; expected two symbols separated by a space")
        merges.append((parts[0], parts[1]))
    return merges


def shipped_merges() -> list[tuple[str, str]]:
    """OpenAI's CLIP merges, from the file shipped with latentlab."""
    path = resources.files("latentlab").joinpath(ASSET)
    try:
        with path.open("rb") as f, gzip.open(f) as g:
            text = g.read().decode("utf-8")
    except FileNotFoundError as e:
        raise CheckpointError(f"{ASSET}: not found; expected OpenAI's gzipped CLIP merges file in the package") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ASSET}: unreadable ({e}); expected a gzipped UTF-8 merges file") from e
    lines = text.split("\n")[1:N_MERGES + 1]  # line 1 is a header
    if len(lines) < N_MERGES:
        raise CheckpointError(f"{ASSET}: {len(lines)} merges; expected at least {N_MERGES}")
    return _parse_merges(lines, ASSET)


def clip_tokenizer(max_length: int = 77) -> Tokenizer:
    """OpenAI's CLIP tokenizer from the merges file shipped with latentlab (49,408 tokens)."""
    merges = shipped_merges()
    return _build(_vocab_from_merges(merges), merges, max_length, ASSET)


def write_vocab_files(folder: str | Path) -> tuple[Path, Path]:
    """The shipped vocabulary as transformers' vocab.json and merges.txt in `folder` (what a diffusers
    pipeline's tokenizer/ holds); returns their paths."""
    folder = Path(folder)
    merges = shipped_merges()
    (folder / "vocab.json").write_text(json.dumps(_vocab_from_merges(merges), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def clip_tokenizer_from_files(vocab_json: str | Path, merges_txt: str | Path, max_length: int = 77) -> Tokenizer:
    """The CLIP tokenizer from transformers-format files, such as a diffusers pipeline's `tokenizer/` folder."""
    vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
    try:
        vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{vocab_json}: not found; expected a CLIP vocab.json") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{vocab_json}: unreadable ({e}); expected a JSON object of token -> id") from e
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                              for k, v in vocab.items()):
        raise CheckpointError(f"{vocab_json}: expected a JSON object of token -> non-negative integer id")
    try:
        text = merges_txt.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise CheckpointError(f"{merges_txt}: not found; expected a CLIP merges.txt") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{merges_txt}: unreadable ({e}); expected a UTF-8 text file") from e
    lines = text.strip().split("\n")
    if not lines[0].startswith("#version"):
        raise CheckpointError(f"{merges_txt}: first line is {lines[0][:60]!r}; expected a '#version' header")
    merges = _parse_merges(lines[1:N_MERGES + 1], str(merges_txt))  # transformers reads no further
    return _build(vocab, merges, max_length, f"{vocab_json.name} and {merges_txt.name}")


def clip_tokenizer_from_tokenizer_json(path: str | Path, max_length: int = 77) -> Tokenizer:
    """The CLIP tokenizer from the vocabulary and merges inside a `tokenizer.json` (what transformers 5 saves
    in place of vocab.json and merges.txt). Only the BPE tables are read; the text clean-up and splitting
    are ours, as `clip_tokenizer_from_files` builds them, so the ids are those of SD 1.x's CLIPTokenizer."""
    path = Path(path)
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not found; expected a tokenizer.json") from e
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); expected a tokenizers JSON file") from e
    vocab, merges = model.get("vocab"), model.get("merges")
    if model.get("type") != "BPE" or not isinstance(vocab, dict) or not isinstance(merges, list):
        raise CheckpointError(f"{path}: holds no BPE vocabulary and merges; expected a CLIP tokenizer")
    lines = [m if isinstance(m, str) else " ".join(m) for m in merges[:N_MERGES]]
    return _build(vocab, _parse_merges(lines, str(path)), max_length, str(path))
