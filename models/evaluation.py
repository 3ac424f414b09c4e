"""How well an audio encoder's embeddings carry class meaning, measured as in the paper.

- Zero-shot classification: each clip goes to the class whose CLIP text embedding (of the
  class prompt) is nearest to its audio embedding; nothing is trained.
- Linear probe: a multinomial logistic regression on the frozen audio embeddings. With folds
  (ESC-50: 5, UrbanSound8K: 10) each fold is held out once, training on the others, and the
  accuracies are averaged, as both datasets prescribe; without folds a seeded stratified
  split holds out a share of each class.
- Per class: mean cosine between the clips' audio embeddings and the class text embedding, and
  against the other classes' text embeddings (how far the matching text stands out).

Results come as a ``Report`` that renders a table shaped like the paper's and a JSON dict.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.datasets import ClipDataset, collate_clips

logger = logging.getLogger(__name__)

EMBED_BATCH = 32  # clips per encoder forward
TOP_K = 5  # zero-shot top-k accuracy reported beside top-1 (when there are more classes)
PROBE_L2 = 1e-3  # L2 penalty on the probe's weights (per-feature standardised inputs)
PROBE_MAX_ITER = 500  # L-BFGS iterations (full batch)
PROBE_HISTORY = 10  # L-BFGS curvature pairs kept (more costs time, not accuracy, here)
PROBE_TOLERANCE = 1e-5  # L-BFGS stops once the largest gradient entry is below this
PROBE_TEST_FRACTION = 0.2  # held-out share of each class when there are no folds
PERCENT = 100.0


@dataclass
class Embedded:
    """Audio embeddings of the readable clips of a dataset."""

    embeddings: Tensor  # (N, D) float32 unit vectors, CPU
    labels: Tensor  # (N,) int64 class index of each clip
    folds: list[str | None]  # (N,) fold of each clip
    skipped: list[int]  # record indices that could not be read


@torch.no_grad()
def embed_clips(
    encoder: nn.Module,
    dataset: ClipDataset,
    class_labels: Sequence[str],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = EMBED_BATCH,
    num_workers: int = 0,
    progress: bool = False,
) -> Embedded:
    """Run ``encoder`` (in eval mode) over every clip of ``dataset``."""
    index = {label: i for i, label in enumerate(class_labels)}
    unknown = sorted({r.label for r in dataset.records} - set(index))
    if unknown:
        raise ValueError(f"clips have labels outside the class list: {unknown[:5]}")
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips
    )
    was_training = encoder.training
    encoder.eval()
    chunks: list[Tensor] = []
    kept: list[int] = []
    skipped: list[int] = []
    for batch in tqdm(loader, desc="embedding", unit="batch", disable=not progress):
        skipped.extend(batch.skipped)
        if batch.inputs.shape[0] == 0:
            continue
        out = encoder(batch.inputs.to(device))  # (B, D)
        chunks.append(F.normalize(out.float(), dim=-1).cpu())
        kept.extend(batch.indices.tolist())
    encoder.train(was_training)
    if not chunks:
        raise ValueError("no clip of the dataset could be read")
    records = [dataset.records[i] for i in kept]
    return Embedded(
        embeddings=torch.cat(chunks),
        labels=torch.tensor([index[r.label] for r in records], dtype=torch.int64),
        folds=[r.fold for r in records],
        skipped=skipped,
    )


# --- Zero-shot --------------------------------------------------------------------------------


@dataclass
class ZeroShot:
    top1: float  # share of clips whose nearest class text is their own class
    topk: float | None  # the same within the k nearest (None with k or fewer classes)
    k: int
    per_class: dict[str, float]  # top-1 accuracy of each class present
    predictions: list[int]  # (N,) predicted class indices


def zero_shot(
    embeddings: Tensor, labels: Tensor, class_text: Tensor, class_labels: Sequence[str]
) -> ZeroShot:
    """Nearest class text embedding, by cosine: (N, D) audio, (N,) labels, (C, D) text."""
    sims = F.normalize(embeddings.float(), dim=-1) @ F.normalize(class_text.float(), dim=-1).T
    predicted = sims.argmax(dim=1)  # (N,)
    correct = predicted == labels
    k = min(TOP_K, sims.shape[1])
    topk = None
    if sims.shape[1] > TOP_K:
        hits = (sims.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        topk = float(hits.float().mean())
    per_class = {
        class_labels[c]: float(correct[labels == c].float().mean())
        for c in sorted(set(labels.tolist()))
    }
    return ZeroShot(float(correct.float().mean()), topk, k, per_class, predicted.tolist())


# --- Similarities ----------------------------------------------------------------------------


@dataclass
class ClassSimilarity:
    clips: int
    matched: float  # mean cos(audio, own class text)
    others: float  # mean cos(audio, other classes' texts); nan with a single class


def class_similarity(
    embeddings: Tensor, labels: Tensor, class_text: Tensor, class_labels: Sequence[str]
) -> dict[str, ClassSimilarity]:
    """Mean audio-text cosines of each class present."""
    sims = F.normalize(embeddings.float(), dim=-1) @ F.normalize(class_text.float(), dim=-1).T
    out = {}
    for c in sorted(set(labels.tolist())):
        rows = sims[labels == c]  # (n_c, C)
        others = torch.cat([rows[:, :c], rows[:, c + 1 :]], dim=1)
        out[class_labels[c]] = ClassSimilarity(
            clips=int(rows.shape[0]),
            matched=float(rows[:, c].mean()),
            others=float(others.mean()) if others.numel() else math.nan,
        )
    return out


# --- Linear probe -----------------------------------------------------------------------------


def fit_logistic(
    features: Tensor, labels: Tensor, n_classes: int, *, l2: float = PROBE_L2
) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic on the CPU).

    ``features`` are expected standardised; the penalty ``l2 / 2 * ||W||^2`` spares the bias.
    """
    x = features.float()
    model = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        max_iter=PROBE_MAX_ITER,
        history_size=PROBE_HISTORY,
        tolerance_grad=PROBE_TOLERANCE,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), labels) + 0.5 * l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return model


def probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, n_classes: int, *, l2: float
) -> float:
    """Fit on one side, accuracy on the other; features standardised with train statistics."""
    mean = train_x.mean(dim=0, keepdim=True)
    std = train_x.std(dim=0, keepdim=True, unbiased=False).clamp(min=1e-6)
    model = fit_logistic((train_x - mean) / std, train_y, n_classes, l2=l2)
    with torch.no_grad():
        predicted = model((test_x - mean) / std).argmax(dim=1)
    return float((predicted == test_y).float().mean())


def stratified_split(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """(N,) bool test mask: ``fraction`` of each class (at least one clip of every class with
    two or more stays in training)."""
    rng = random.Random(seed)
    test = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in sorted(set(labels.tolist())):
        members = (labels == c).nonzero().flatten().tolist()
        rng.shuffle(members)
        n_test = min(len(members) - 1, max(1, round(fraction * len(members))))
        test[members[:n_test]] = True
    return test


@dataclass
class Probe:
    accuracy: float  # mean over held-out folds (or the single split)
    per_fold: dict[str, float]  # held-out fold -> accuracy
    protocol: str  # how the clips were split


def linear_probe(
    embeddings: Tensor,
    labels: Tensor,
    folds: Sequence[str | None],
    n_classes: int,
    *,
    test_fold: str | None = None,  # hold out only this fold (e.g. VGGSound's "test")
    l2: float = PROBE_L2,
    seed: int = 0,
) -> Probe:
    """Leave-one-fold-out when every clip has a fold, else a seeded stratified split."""
    x = embeddings.float()
    names = sorted({f for f in folds if f is not None})
    if test_fold is not None and test_fold not in names:
        raise ValueError(f"no clips have fold {test_fold!r}; folds present: {names or 'none'}")
    if names and all(f is not None for f in folds) and len(names) > 1:
        held = [test_fold] if test_fold is not None else names
        per_fold = {}
        for fold in held:
            test = torch.tensor([f == fold for f in folds])
            per_fold[fold] = probe_accuracy(
                x[~test], labels[~test], x[test], labels[test], n_classes, l2=l2
            )
        protocol = (
            f"train on the other folds, test on fold {test_fold}"
            if test_fold is not None
            else f"leave-one-fold-out over {len(names)} folds"
        )
        return Probe(sum(per_fold.values()) / len(per_fold), per_fold, protocol)
    test = stratified_split(labels, PROBE_TEST_FRACTION, seed)
    if not test.any() or test.all():
        raise ValueError("too few clips for a linear probe: need two or more in some class")
    accuracy = probe_accuracy(x[~test], labels[~test], x[test], labels[test], n_classes, l2=l2)
    protocol = f"seeded stratified split, {PROBE_TEST_FRACTION:.0%} of each class held out"
    return Probe(accuracy, {"split": accuracy}, protocol)


# --- Report -----------------------------------------------------------------------------------


@dataclass
class Report:
    model: str  # the checkpoint's name in the table
    dataset: str  # the manifest's name in the table
    clips: int  # clips embedded
    skipped: int  # clips that could not be read
    classes: int
    zero_shot: ZeroShot
    probe: Probe | None
    similarity: dict[str, ClassSimilarity]
    settings: dict[str, Any] = field(default_factory=dict)  # template, profile, l2, ...

    def table(self) -> str:
        """The paper's results table layout (accuracy in %), then a per-class table."""
        rows = [("model", "setting", self.dataset)]
        if self.probe is not None:
            rows.append((self.model, "linear probe", f"{self.probe.accuracy * PERCENT:.1f}"))
        rows.append((self.model, "zero-shot", f"{self.zero_shot.top1 * PERCENT:.1f}"))
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|---|---|---|")
        lines.append("")
        lines.append(
            "| class | clips | zero-shot % | cos(audio, own text) | cos(audio, other texts) |"
        )
        lines.append("|---|---|---|---|---|")
        for label, sim in self.similarity.items():
            acc = self.zero_shot.per_class.get(label, math.nan) * PERCENT
            lines.append(
                f"| {label} | {sim.clips} | {acc:.1f} | {sim.matched:.3f} | {sim.others:.3f} |"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """Headline numbers in one block."""
        parts = [
            f"clips: {self.clips} ({self.skipped} skipped), classes: {self.classes}",
            f"zero-shot accuracy: {self.zero_shot.top1 * PERCENT:.1f} %"
            + (
                f" (top-{self.zero_shot.k}: {self.zero_shot.topk * PERCENT:.1f} %)"
                if self.zero_shot.topk is not None
                else ""
            ),
        ]
        if self.probe is not None:
            parts.append(
                f"linear-probe accuracy: {self.probe.accuracy * PERCENT:.1f} % ({self.probe.protocol})"
            )
        else:
            parts.append("linear-probe accuracy: n/a (too few clips)")
        return "\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        zero = asdict(self.zero_shot)
        zero.pop("predictions")
        return {
            "model": self.model,
            "dataset": self.dataset,
            "clips": self.clips,
            "skipped": self.skipped,
            "classes": self.classes,
            "zero_shot": zero,
            "linear_probe": asdict(self.probe) if self.probe is not None else None,
            "similarity": {k: asdict(v) for k, v in self.similarity.items()},
            "settings": self.settings,
        }


def evaluate(
    embedded: Embedded,
    class_text: Tensor,  # (C, D) text embedding of each class prompt
    class_labels: Sequence[str],
    *,
    model: str,
    dataset: str,
    test_fold: str | None = None,
    l2: float = PROBE_L2,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
) -> Report:
    """Zero-shot, linear probe (when the clips allow one) and per-class similarities."""
    emb, labels = embedded.embeddings, embedded.labels
    try:
        probe: Probe | None = linear_probe(
            emb, labels, embedded.folds, len(class_labels), test_fold=test_fold, l2=l2, seed=seed
        )
    except ValueError as exc:
        if test_fold is not None:
            raise
        logger.warning("no linear probe: %s", exc)
        probe = None
    return Report(
        model=model,
        dataset=dataset,
        clips=int(emb.shape[0]),
        skipped=len(embedded.skipped),
        classes=len(class_labels),
        zero_shot=zero_shot(emb, labels, class_text, class_labels),
        probe=probe,
        similarity=class_similarity(emb, labels, class_text, class_labels),
        settings=dict(settings or {}),
    )
