"""Rank 0's per-epoch record: a metrics CSV (rewritten atomically) and TensorBoard scalars."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence


def _number(text: str):
    if text == "":
        return text
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def metrics_rows(path: Path, up_to_epoch: int) -> list[dict]:
    """Rows of an existing metrics CSV up to an epoch (a resumed run rewrites what came after), as numbers."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [row for row in rows if int(row["epoch"]) <= up_to_epoch]


def write_metrics(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def stage1_tag(key: str) -> str | None:
    """train_ce -> train/ce, val_accuracy -> val/accuracy, lr -> lr, the rest under speed/."""
    if key == "epoch":
        return None
    if key == "lr":
        return key
    return key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else f"speed/{key}"


class Recorder:
    """metrics CSV rows (missing fields stay blank) and TensorBoard events, one per finished epoch."""

    def __init__(self, out: Path, filename: str, fields: Sequence[str], start_epoch: int,
                 tag: Callable[[str], str | None] = stage1_tag):
        from torch.utils.tensorboard import SummaryWriter

        self.path, self.fields, self.tag = out / filename, tuple(fields), tag
        out.mkdir(parents=True, exist_ok=True)
        self.rows = metrics_rows(self.path, start_epoch)  # rows of unfinished epochs are dropped
        self.writer = SummaryWriter(str(out / "tb"), purge_step=start_epoch + 1)  # and so are their events

    def add(self, row: dict) -> None:
        self.rows.append({k: row.get(k, "") for k in self.fields})
        write_metrics(self.path, self.rows, self.fields)
        for key, value in row.items():
            tag = self.tag(key)
            if tag is not None and value != "" and isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
