"""`latentlab train-classifier`: the classifier that `latentlab eval --data fashion-mnist` (or mnist) reads
samples with (evaluation/classifier.py)."""

from __future__ import annotations

import json

from ..errors import LatentlabError
from ..evaluation import classifier
from .options import common, defaults, flag
from .output import check_out
from .values import positive

TRAIN = defaults(classifier.train_classifier)


def add_parser(commands) -> None:
    k = commands.add_parser("train-classifier", help="train the classifier that `eval --data` measures samples with")
    k.add_argument("--data", choices=("fashion-mnist", "mnist"), required=True)
    k.add_argument("--out", required=True, help="the classifier folder to write")
    flag(k, TRAIN, "epochs", type=positive(int))
    common(k, seeds=TRAIN, model=False)
    k.set_defaults(func=run)


def run(args) -> None:
    from ..data.sources import open_dataset  # here, not above: tests replace these
    from ..devices import resolve_device
    from ..evaluation.classifier import train_classifier

    check_out(args.out, folder=True)
    train, test = (open_dataset(args.data, split=split, seed=args.seed) for split in ("train", "test"))
    if not hasattr(train, "class_captions"):
        raise LatentlabError(f"--data {args.data} has no classes; accepted: fashion-mnist, mnist")
    print(json.dumps(train_classifier(train, test, args.out, epochs=args.epochs, device=resolve_device(args.device),
                                      seed=args.seed)))
