"""``python -m mpafer <command>`` (or ``mpafer <command>`` once the package is installed): evaluate, predict.

Each command lives in its own module (``mpafer.cli_<command>``) with a ``main(argv)``.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "evaluate": "evaluate a checkpoint on a dataset split (accuracy, per-class metrics, confusion matrix)",
    "predict": "find the faces in an image and explain each prediction",
}


def usage() -> str:
    lines = ["usage: python -m mpafer <command> [options]   (installed: mpafer <command> [options])",
             "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "python -m mpafer <command> --help   shows a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)}; "
              f"python -m mpafer --help lists them)", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mpafer.cli_{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
