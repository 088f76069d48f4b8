"""Continual customisation: C-LoRA's self-regularisation (Smith et al. 2023, "Continual Diffusion").

A sequence of tasks t = 1 .. T, each a new concept taught from a few images. C-LoRA adapts the U-Net's
cross-attention key and value projections (`TARGETS`, the only layers the text reaches) by one low-rank update
per task; the earlier ones are kept and frozen, so that after task t

    W_t = W_0 + sum_{tau <= t} B_tau A_tau

and task t's update is penalised where the earlier tasks already changed the weight:

    L = L_diffusion + lambda L_forget,    L_forget = sum over the layers of || P_t (.) B_t A_t ||_F^2,
    P_t = sum_{tau < t} B_tau A_tau

((.) the element-wise product). Task t writes into the entries of K and V that the earlier tasks left alone,
which is what keeps their concepts (each named by a token of its own) drawing as they did. With lambda = 0 it
is sequential LoRA on K and V, the paper's ablation. The earlier tasks stay in the network as frozen
adapters (`summed_updates` reads P_t off them, in float32), so each task's file is its own update, and a
model with every task's file loaded, each at multiplier 1, is the model the sequence trained.

`METHODS` are C-LoRA and the baselines it is measured against, on the same folders, steps and batch:

    c-lora    the above (forget_weight 0: the ablation)
    lora      naive sequential LoRA: the same layers and rank, kept after each task, no penalty, and the
              concept named by its plain word in the captions ("a pink star"), as `lora train` would teach it
    full      sequential full fine-tuning: every U-Net weight trains, from the previous task's, plain words
    separate  one LoRA per concept from the base model (C-LoRA's layers and token, nothing to penalise): no
              interference, the upper bound, but a prompt must say which concept's file to load
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..adapters.inject import adapter_layers, trainable
from ..adapters.lora import LoRALayer
from ..adapters.textual_inversion import add_tokens, token_embedding, train_rows
from ..data.concept import MANIFEST
from ..errors import LatentlabError
from ..io import atomic_write, read_json
from ..io.textual_inversion import save_textual_inversion
from .lora import LORA_FILENAME, LoRATrainConfig, LoRATrainer
from .loop import check_numbers
from .state import FILENAME, digest
from .textual_inversion import EMBEDDING_FILENAME, manifest_word, with_token

TARGETS = ("attn2.to_k", "attn2.to_v")  # the U-Net's cross-attention K and V projections (the paper's)
METHODS = ("c-lora", "lora", "full", "separate")  # the module docstring
TOKEN_METHODS = ("c-lora", "separate")  # those that name each concept by a learned token; the others by its word
FULL_FILENAME = "unet.safetensors"  # OUT/task-K/unet.safetensors: a full fine-tuning task's U-Net
SEQUENCE = "sequence.json"  # OUT/sequence.json: the settings a resumed sequence must share
DONE = "done.json"  # OUT/task-K/done.json: the task's result, written once it has finished


@dataclass
class ContinualConfig:
    tasks: tuple[str, ...]  # one folder of captioned images per task, in order (python -m latentlab.data.concept)
    out: str  # OUT/task-1, OUT/task-2, ...: each task's run (lora.safetensors, learned_embeds.safetensors)
    model: str = "shapes-default"  # the base model, anything Pipeline.load takes
    method: str = "c-lora"  # c-lora, or a baseline: lora (naive sequential), full, separate (METHODS)
    words: tuple[str, ...] = ()  # each task's concept word in its captions; (): each folder's concept.json
    forget_weight: float = 10.0  # lambda: L = L_diffusion + lambda L_forget; 0: sequential LoRA on K and V
    targets: tuple[str, ...] = TARGETS  # the U-Net layers each task's update adapts (c-lora, lora, separate)
    rank: int = 4  # r of each task's update of K and V
    steps: int = 800  # per task
    batch_size: int = 8
    lr: float = 1e-3  # AdamW's, for the update of K and V
    token_lr: float = 5e-3  # the token's (textual inversion's rate): at lr it moves too little (records/continual)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500  # each task's resumable checkpoint, every N steps (SIGTERM and Ctrl-C too)
    resume: bool = False  # continue the sequence in `out`: finished tasks are kept, the current one resumes

    def __post_init__(self):
        check_numbers(self)
        if self.method not in METHODS:
            raise LatentlabError(f"unknown continual method {self.method!r}; accepted: {', '.join(METHODS)}")


def summed_updates(unet: nn.Module, adapters: list[str]) -> dict[str, torch.Tensor]:
    """P_t = sum of the earlier tasks' updates B A (at their multipliers) per layer that holds any of `adapters`,
    by module name, float32 and detached: read off the adapters themselves, merged or not, so that no rounding
    of merged low-precision weights enters it."""
    past = {}
    for name, layer in adapter_layers(unet, LoRALayer):
        held = [adapter for adapter in adapters if adapter in layer.adapters]
        if held:
            with torch.no_grad():
                past[name] = sum(layer.delta_weight(adapter, layer.merge_factor(adapter)) for adapter in held)
    return past


def forgetting_penalty(unet: nn.Module, past: dict[str, torch.Tensor], adapter: str = "default") -> torch.Tensor:
    """L_forget = sum over the layers of || P_t (.) Delta W_t ||_F^2, Delta W_t = adapter's s (alpha / r) B A
    (differentiable in A and B); `past`: `summed_updates`. Layers without the adapter add nothing."""
    terms = [(past[name].to(layer.base.weight.device) * layer.delta_weight(adapter)).square().sum()
             for name, layer in adapter_layers(unet, LoRALayer) if name in past and adapter in layer.adapters]
    if not terms:
        raise LatentlabError(f"no layer of the model holds adapter {adapter!r} on {' or '.join(TARGETS)}")
    return torch.stack(terms).sum()


def load_task(pipe, folder: Path, name: str) -> str | None:
    """A finished task into `pipe`: its update (as adapter `name`, at multiplier 1) or, for full fine-tuning, its
    U-Net, and its token if it learned one; returns the adapter's name (None for a U-Net)."""
    if (folder / FULL_FILENAME).is_file():
        load_unet(pipe.unet, folder / FULL_FILENAME)
        name = None
    else:
        name = pipe.load_lora(folder / LORA_FILENAME, name=name)
    if (folder / EMBEDDING_FILENAME).is_file():
        pipe.load_textual_inversion(folder / EMBEDDING_FILENAME)
    return name


@torch.no_grad()
def load_unet(unet: nn.Module, path: Path) -> None:
    """A full fine-tuning task's U-Net weights (every parameter, float32) into `unet`, in its dtype."""
    from safetensors.torch import load_file

    tensors, mine = load_file(str(path)), dict(unet.named_parameters())
    if tensors.keys() != mine.keys() or any(tensors[k].shape != v.shape for k, v in mine.items()):
        raise LatentlabError(f"{path} is not a U-Net of this model; give a task of a sequence trained on it")
    for key, value in mine.items():
        value.copy_(tensors[key])


def token_of(word: str) -> str:
    """The learned token that stands for a task's concept in prompts: <word>."""
    return f"<{word}>"


class ContinualTaskTrainer(LoRATrainer):
    """Task t of a sequence: the earlier tasks loaded (their updates frozen), then a new LoRA and, with
    `learned_token`, a new token (from a random embedding, as the paper starts) trained together, with
    forget_weight L_forget added to the loss. Writes OUT/lora.safetensors (the update) and
    OUT/learned_embeds.safetensors (the token). Without `learned_token` the captions keep their word."""

    def __init__(self, config: LoRATrainConfig, *, earlier: list[Path], word: str, learned_token: bool = True,
                 forget_weight: float = 0.0, token_lr: float = 5e-3):
        self.earlier, self.word, self.forget_weight, self.token_lr = earlier, word, forget_weight, token_lr
        self.token = token_of(word) if learned_token else None
        super().__init__(config)

    def add_adapters(self) -> dict[str, nn.Module]:
        self.load_earlier()
        if self.token is not None:
            self.vectors = self.add_token()
        return super().add_adapters()

    def load_earlier(self) -> None:
        """The earlier tasks into the model, frozen, at multiplier 1; P_t read off them; the model's identity is
        now theirs too. Not merged: merged into a bfloat16 base (CUDA) they would round W0 by up to 0.4% of the
        updates, and the new file's fingerprint of W0 would no longer match the base model's."""
        pipe = self.pipe
        names = [load_task(pipe, folder, f"task{k}") for k, folder in enumerate(self.earlier, start=1)]
        for name in pipe.loras:
            for tensor in trainable(pipe.unet, name):
                tensor.requires_grad_(False)
        self.past = summed_updates(pipe.unet, [name for name in names if name])
        self.identity["model"] = digest(pipe.text_encoder, pipe.unet, pipe.vae, dataclasses.asdict(pipe.diffusion))

    def add_token(self) -> nn.Parameter:
        """The task's token, from a random embedding of the table's scale; returns its trainable (1, D) row."""
        pipe = self.pipe
        table = token_embedding(pipe.text_encoder).weight
        g = torch.Generator().manual_seed(self.config.seed + len(self.earlier))
        vectors = torch.randn(1, table.shape[1], generator=g) * table.float().std().item()
        ids = add_tokens(pipe.tokenizer, pipe.text_encoder, self.token, vectors)
        return train_rows(pipe.text_encoder, ids)  # (1, D) float32

    @property
    def learns_token(self) -> bool:
        return self.token is not None

    def trainable_tensors(self) -> list[nn.Parameter]:
        return super().trainable_tensors() + ([self.vectors] if self.learns_token else [])

    def param_groups(self) -> list[dict]:
        if not self.learns_token:
            return super().param_groups()
        update = [p for p in self.params if p is not self.vectors]
        return [{"params": update, "base_lr": self.config.lr}, {"params": [self.vectors], "base_lr": self.token_lr}]

    @property
    def text_trains(self) -> bool:
        return self.learns_token or super().text_trains  # the token's row

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().trained_tensors(), **({"vectors": self.vectors} if self.learns_token else {})}

    @torch.no_grad()
    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        super().restore_tensors(tensors, path)
        if not self.learns_token:
            return
        if "vectors" not in tensors or tensors["vectors"].shape != self.vectors.shape:
            raise LatentlabError(f"{path}: its token vectors do not fit this run's")
        self.vectors.copy_(tensors["vectors"])

    def batch(self, step: int):
        z_0, captions, t, eps = super().batch(step)
        if self.learns_token:
            captions = [with_token(text, self.word, self.token) for text in captions]
        return z_0, captions, t, eps

    def loss(self, z_0, captions, t, eps) -> torch.Tensor:
        loss = super().loss(z_0, captions, t, eps)
        if not self.past or not self.forget_weight:
            return loss
        return loss + self.forget_weight * forgetting_penalty(self.pipe.unet, self.past)

    def save_result(self) -> Path:
        path = super().save_result()
        if self.learns_token:
            metadata = {"base_model": str(self.config.model), "steps": str(self.step), "data": str(self.config.data)}
            save_textual_inversion(self.out / EMBEDDING_FILENAME, self.token, self.vectors, metadata)
        return path

    def run(self) -> dict:
        result = super().run()
        if self.learns_token:
            result.update(embedding=str(self.out / EMBEDDING_FILENAME), token=self.token)
        return {**result, "word": self.token or self.word}  # what prompts name the concept by


class ContinualFullTrainer(ContinualTaskTrainer):
    """Task t of sequential full fine-tuning: the previous task's U-Net, every weight of it trained in float32
    (AdamW's state with it), the captions' plain word. Writes OUT/unet.safetensors."""

    def add_adapters(self) -> dict[str, nn.Module]:
        if self.earlier:  # each full task's U-Net holds every earlier one's
            self.earlier = self.earlier[-1:]
        self.load_earlier()
        return {"unet": self.pipe.unet.float().requires_grad_(True)}

    def trainable_tensors(self) -> list[nn.Parameter]:
        return list(self.pipe.unet.parameters())

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {f"unet.{k}": v for k, v in self.pipe.unet.named_parameters()}

    @torch.no_grad()
    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        mine = self.trained_tensors()
        if any(k not in tensors or tensors[k].shape != v.shape for k, v in mine.items()):
            raise LatentlabError(f"{path}: its U-Net does not fit this run's")
        for key, value in mine.items():
            value.copy_(tensors[key])

    @property
    def result_path(self) -> Path:
        return self.out / FULL_FILENAME

    def save_result(self) -> Path:
        from safetensors.torch import save

        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.pipe.unet.named_parameters()}
        metadata = {"base_model": str(self.config.model), "steps": str(self.step), "data": str(self.config.data)}
        atomic_write(self.result_path, save(tensors, metadata=metadata))
        return self.result_path


def task_words(c: ContinualConfig) -> list[str]:
    """Each task's concept word: `words`, else each folder's concept.json; refused when one repeats."""
    if c.words and len(c.words) != len(c.tasks):
        raise LatentlabError(f"{len(c.words)} words for {len(c.tasks)} tasks; give one word per task, or none")
    words = list(c.words) or [_manifest_word(Path(folder)) for folder in c.tasks]
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise LatentlabError(f"the concept word {repeated[0]!r} names more than one task; each task needs a word "
                             "of its own")
    return words


def _manifest_word(folder: Path) -> str:
    word = manifest_word(folder)
    if word is None:
        raise LatentlabError(f"{folder} has no {MANIFEST}; give each task's concept word (words)")
    return word


def check_tasks(c: ContinualConfig, words: list[str]) -> None:
    """Every task folder holds captioned images whose captions name its concept: checked before anything is
    written, so that a bad folder leaves no sequence behind."""
    from ..data.folder import ImageFolder

    for folder, word in zip(c.tasks, words):
        captions = ImageFolder(folder, log=lambda _: None).captions
        if not any(with_token(text, word, token_of(word)) != text for text in captions):
            raise LatentlabError(f"no caption of {folder} holds the word {word!r}; give the captions' word for "
                                 "the concept")


def check_sequence(c: ContinualConfig, words: list[str]) -> None:
    """A new sequence starts in a folder that holds none; a resumed one continues the sequence of its settings."""
    path, settings = Path(c.out) / SEQUENCE, _settings(c, words)
    if not path.is_file():
        if c.resume:
            raise LatentlabError(f"{c.out} holds no sequence to resume ({SEQUENCE} is missing)")
        return atomic_write(path, json.dumps(settings, indent=2) + "\n")
    if not c.resume:
        raise LatentlabError(f"{c.out} already holds a sequence; continue it with resume, or give another folder")
    saved = read_json(path)
    if saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise LatentlabError(f"{path} is another sequence's (its {', '.join(changed) or 'settings'} differ); resume "
                             "with its settings, or give another folder")


def _settings(c: ContinualConfig, words: list[str]) -> dict:
    kept = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("out", "resume", "device", "checkpoint_every")}
    return {**kept, "tasks": [str(Path(t).resolve()) for t in c.tasks], "words": words, "targets": list(c.targets)}


def task_config(c: ContinualConfig, k: int) -> LoRATrainConfig:
    """Task k's (1-based) run: LoRA of rank r on the targets (full fine-tuning ignores them), in OUT/task-k,
    resumed where its checkpoint is."""
    out = Path(c.out) / f"task-{k}"
    return LoRATrainConfig(data=c.tasks[k - 1], out=str(out), model=c.model, method="lora", rank=c.rank,
                           targets=tuple(c.targets), steps=c.steps, batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                           device=c.device, checkpoint_every=c.checkpoint_every, resume=(out / FILENAME).is_file())


def task_trainer(c: ContinualConfig, k: int, word: str) -> ContinualTaskTrainer:
    """Task k's trainer for the sequence's method: what it loads first, what it trains, how prompts name it."""
    earlier = [] if c.method == "separate" else [Path(c.out) / f"task-{i}" for i in range(1, k)]
    kind = ContinualFullTrainer if c.method == "full" else ContinualTaskTrainer
    return kind(task_config(c, k), earlier=earlier, word=word, learned_token=c.method in TOKEN_METHODS,
                forget_weight=c.forget_weight if c.method == "c-lora" else 0.0, token_lr=c.token_lr)


def train_sequence(c: ContinualConfig) -> dict:
    """Train the tasks in order (finished ones kept, an interrupted one resumed exactly); returns {"tasks": each
    finished task's result, "interrupted", "signal"}. Stops after a task that was stopped."""
    if not c.tasks:
        raise LatentlabError("no tasks: give at least one folder of captioned images")
    words = task_words(c)
    check_tasks(c, words)
    Path(c.out).mkdir(parents=True, exist_ok=True)
    check_sequence(c, words)
    results = []
    for k, word in enumerate(words, start=1):
        done = Path(c.out) / f"task-{k}" / DONE
        if done.is_file():
            results.append(read_json(done))
            continue
        result = task_trainer(c, k, word).run()
        if result["interrupted"]:
            return {"tasks": results, "interrupted": True, "signal": result["signal"]}
        atomic_write(done, json.dumps(result, indent=2) + "\n")
        results.append(result)
    return {"tasks": results, "interrupted": False, "signal": None}

