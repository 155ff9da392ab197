"""Evaluate a model on a dataset split: accuracy, per-class precision and recall, confusion matrix.

    from mpafer.evaluate import evaluate, plot_confusion
    metrics = evaluate(model, load_dataset("ferplus", root, "test", image_size=None), tta_flip=True)
    plot_confusion(metrics["confusion"], metrics["classes"], "confusion.png")

``dataset`` is anything with ``images`` (uint8 (N, H, W, 3) numpy array or tensor, on any device),
``labels`` and ``classes``: a ``mpafer.data.FaceDataset``, or the device-resident copy the
training script keeps. Images are resized and normalised on the model's device (transforms.to_model_input).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .input_protocol import to_grey
from .bf16_inference import Bf16ImageTower
from .precision import autocast, effective_precision, uses_bf16_tower
from .transforms import to_model_input


def class_order(model_classes: Sequence[str], data_classes: Sequence[str]) -> list[int]:
    """Index of each data class among the model's outputs; the two sets must be the same."""
    model_classes, data_classes = list(model_classes), list(data_classes)
    if sorted(model_classes) != sorted(data_classes):
        raise ValueError(f"the model predicts {model_classes} but the dataset is labelled with {data_classes}; "
                         f"evaluate a model trained on this dataset's classes")
    return [model_classes.index(c) for c in data_classes]


@torch.inference_mode()
def batched_scores(score: Callable[[torch.Tensor], torch.Tensor], images, size: int, mean: Sequence[float],
                   std: Sequence[float], device: torch.device | str, batch_size: int = 256, tta_flip: bool = False,
                   grey: bool = False, precision: str = "auto", progress: bool = True,
                   desc: str = "evaluate") -> torch.Tensor:
    """(N, C) float32 scores on the CPU: ``score`` of each batch of uint8 images, resized and normalised.

    With ``tta_flip`` each image's scores are averaged with its mirror image's; ``grey`` turns colour
    faces grey first; ``precision`` as ``mpafer.precision.autocast``. Any model that maps a
    (B, 3, size, size) batch to class scores fits: an MPAFER model's probabilities, or a bare
    open_clip model's CGLA logits against fixed class texts (stage 0's validation).
    """
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        batch = images[start:start + batch_size]
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        if grey and batch.shape[-1] == 3:  # channels-last colour faces
            batch = to_grey(batch)
        x = to_model_input(batch, size, mean, std, device=device)
        with autocast(device, precision):
            scores = score(x)
            if tta_flip:
                scores = (scores + score(x.flip(-1))) / 2
        chunks.append(scores.float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


@torch.inference_mode()
def predict_probabilities(model, images, batch_size: int = 256, tta_flip: bool | None = None,
                          progress: bool = True, desc: str = "evaluate", precision: str = "auto") -> torch.Tensor:
    """(N, C) class probabilities on the CPU, in the model's class order, for uint8 images.

    With ``tta_flip`` each image's probabilities are averaged with its mirror image's; None follows
    the model's input protocol, which also says whether faces are turned grey first. ``precision``
    "auto": bf16 on CUDA, as in training; float32 on a CPU, so results are exact and reproducible.
    "bf16" on a CPU runs the bfloat16 image-tower copy that ``Predictor`` runs there (``mpafer.bf16_inference``).
    """
    protocol = model.config.input
    if tta_flip is None:
        tta_flip = protocol.tta_flip
    if len(images) == 0:
        return torch.zeros(0, model.num_classes)
    score = lambda x: model(x).probabilities  # noqa: E731
    precision = effective_precision(model.device, precision)
    if uses_bf16_tower(model.device, precision):  # bf16 on a CPU: the tower copy the Predictor runs
        tower = Bf16ImageTower(model)
        score, precision = (lambda x: tower(x).probabilities), "fp32"  # no autocast around it
    was_training = model.training
    model.eval()
    try:
        return batched_scores(score, images, model.image_size, model.backbone_info.mean,
                              model.backbone_info.std, model.device, batch_size, tta_flip, protocol.grey,
                              precision, progress, desc)
    finally:
        model.train(was_training)


def classification_metrics(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, mean class accuracy (mean recall), per-class precision/recall/F1 and confusion.

    ``confusion[i][j]`` counts images of true class i predicted as class j. A class with no
    images (or no predictions) gets recall (or precision) None and is left out of the means.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predictions.shape[0]} predictions")
    num_classes = len(classes)
    confusion = np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)
    support, predicted, correct = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    per_class = {}
    recalls, f1s = [], []
    for i, name in enumerate(classes):
        recall = float(correct[i] / support[i]) if support[i] else None
        precision = float(correct[i] / predicted[i]) if predicted[i] else None
        f1 = None
        if recall is not None and precision is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support[i])}
        if recall is not None:
            recalls.append(recall)
            f1s.append(f1 or 0.0)
    n = int(labels.shape[0])
    return {
        "n": n,
        "accuracy": float(correct.sum() / n) if n else 0.0,
        "mean_class_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "classes": list(classes),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate(model, dataset, batch_size: int = 256, device: str | torch.device | None = None,
             tta_flip: bool | None = None, progress: bool = True, precision: str = "auto") -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (see classification_metrics), in the dataset's class order.

    ``device`` moves the model there first (default: where it already is).
    """
    if device is not None and torch.device(device) != model.device:
        model.to(device)
    order = class_order(model.classes, dataset.classes)
    probs = predict_probabilities(model, dataset.images, batch_size, tta_flip, progress, precision=precision)
    predictions = probs[:, order].argmax(dim=1).numpy()
    labels = dataset.labels.cpu().numpy() if torch.is_tensor(dataset.labels) else np.asarray(dataset.labels)
    metrics = classification_metrics(labels, predictions, dataset.classes)
    metrics["tta_flip"] = bool(model.config.input.tta_flip if tta_flip is None else tta_flip)
    return metrics


def plot_confusion(matrix, classes: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """Save the confusion matrix as a PNG: colours are row-normalised (recall), cells show counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    n = len(classes)
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else 0.0
    ax.set_title(title or f"accuracy {accuracy:.2%} (n = {total})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
