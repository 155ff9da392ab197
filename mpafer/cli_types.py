"""Argument types shared by the command lines (``mpafer``, the demo, the scripts): one message style."""
from __future__ import annotations

import argparse
from typing import Callable


def whole_number(minimum: int | None = None, maximum: int | None = None,
                 words: tuple[str, ...] = ()) -> Callable[[str], int | str]:
    """An argparse ``type``: an int within [minimum, maximum], or one of ``words`` as written.
    (argparse names the argument in front of the message.)"""

    def parse(text: str) -> int | str:
        if text in words:
            return text
        try:
            value = int(text)
        except ValueError:
            alternatives = "".join(f" or '{w}'" for w in words)
            raise argparse.ArgumentTypeError(f"expected a whole number{alternatives}, got {text!r}") from None
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            bounds = (f"from {minimum} to {maximum}" if minimum is not None and maximum is not None
                      else f"at least {minimum}" if minimum is not None else f"at most {maximum}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse
