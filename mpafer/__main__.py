"""``python -m mpafer <command>``: evaluate, predict, info.

Each command lives in its own module (``mpafer.cli_<command>``) with a ``main(argv)``.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "evaluate": "evaluate a checkpoint on a dataset split (accuracy, per-class metrics, confusion matrix)",
    "predict": "find the faces in an image and explain each prediction",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m mpafer <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"mpafer.cli_{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
