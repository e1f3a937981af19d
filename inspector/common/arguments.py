"""argparse types for numeric options: a value out of range or not finite is a usage error (one line,
exit 2), never an 'unexpected' error later."""

from __future__ import annotations

import argparse
import math


def whole(low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value}: must be from {low} to {high}")
        return value
    return parse


def number(low: float, high: float, *, above_low: bool = False):
    """An argparse type: a finite number from ``low`` (excluded with ``above_low``) to ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (above_low and value == low) or value > high:
            bound = f"above {low:g}" if above_low else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text}: must be a number {bound} and at most {high:g}")
        return value
    return parse
