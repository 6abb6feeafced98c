"""Argument checks shared by every constructor and entry point of raycl.

One rule everywhere: a value of the wrong *type* raises ``TypeError``, a value of the right type
outside its allowed range or set raises ``ValueError``. Either message names the parameter and
what it accepts, e.g. ``hidden_size must be an int >= 1, got 0``. Every check takes
``(name, value, ...)`` and returns the value normalised (a plain ``int`` or ``float``), so a
caller writes ``self.size = check_int("size", size, minimum=1)``.

``bool`` is never accepted where an int or a number is expected (``True`` is an ``int`` to
Python but never a size or a rate to a user); numpy integers and floats are (``numbers.Integral``
and ``numbers.Real``). Numbers must be finite: NaN and infinities are rejected.

This module imports nothing from raycl and does not need torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_optional_int",
    "check_rate",
    "check_seed",
]

T = TypeVar("T")

_REPR_MAX = 80  # a tensor or a long list passed by mistake must not flood the message


def _shown(value: Any) -> str:
    """``repr(value)``, shortened to one line of reasonable length."""
    text = " ".join(repr(value).split())
    return text if len(text) <= _REPR_MAX else text[:_REPR_MAX - 3] + "..."


def _got(value: Any) -> str:
    """How a value of the wrong type is shown: its repr and its type."""
    return f"{_shown(value)} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def check_int(name: str, value: Any, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (a missing bound is no bound).

    Raises:
        TypeError: ``value`` is not an integer (``bool`` and floats such as ``2.0`` included).
        ValueError: ``value`` is outside the range.
    """
    what = _int_range(minimum, maximum)
    if not _is_int(value):
        raise TypeError(f"{name} must be {what}, got {_got(value)}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be {what}, got {v}")
    return v


def check_optional_int(name: str, value: Any, minimum: int | None = None,
                       maximum: int | None = None) -> int | None:
    """``None``, or ``value`` as an ``int`` in ``[minimum, maximum]`` (see :func:`check_int`)."""
    if value is None:
        return None
    what = "None or " + _int_range(minimum, maximum)
    if not _is_int(value):
        raise TypeError(f"{name} must be {what}, got {_got(value)}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be {what}, got {v}")
    return v


def check_seed(name: str, value: Any) -> int | None:
    """A random seed: ``None`` (fresh entropy) or an ``int >= 0``."""
    return check_optional_int(name, value, minimum=0)


def _number_range(low: float | None, high: float | None, low_open: bool,
                  high_open: bool) -> str:
    if low is not None and high is not None:
        return (f"a number in {'(' if low_open else '['}{low:g}, "
                f"{high:g}{')' if high_open else ']'}")
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` between ``low`` and ``high`` (a missing bound is none).

    The bounds are included unless ``low_open`` / ``high_open``.

    Raises:
        TypeError: ``value`` is not a real number (``bool`` included).
        ValueError: ``value`` is NaN, infinite, or outside the range.
    """
    what = _number_range(low, high, low_open, high_open)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, got {_got(value)}")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float is out of any finite range
        v = math.inf
    if (not math.isfinite(v)
            or (low is not None and (v <= low if low_open else v < low))
            or (high is not None and (v >= high if high_open else v > high))):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    return v


def check_rate(name: str, value: Any) -> float:
    """A probability in ``[0, 1)``, e.g. a dropout rate."""
    return check_number(name, value, 0.0, 1.0, high_open=True)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``, else a TypeError (``0`` and ``1`` are not flags)."""
    if isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be True or False, got {_got(value)}")


def _alternatives(choices: tuple[Any, ...]) -> str:
    shown = [_shown(c) for c in choices]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def check_choice(name: str, value: T, choices: Iterable[Any]) -> T:
    """``value`` if it equals one of ``choices``.

    Raises:
        TypeError: ``value`` has none of the choices' types (``bool`` only matches a bool).
        ValueError: ``value`` has a right type but is not one of the choices.
    """
    options = tuple(choices)
    if not options:
        raise ValueError(f"{name}: no choices given")
    what = _alternatives(options)
    alike = [c for c in options if _same_kind(value, c)]
    if not alike:
        raise TypeError(f"{name} must be {what}, got {_got(value)}")
    if not any(bool(value == c) for c in alike):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    return value


def _same_kind(value: Any, choice: Any) -> bool:
    """Whether ``value`` could equal ``choice``: bools match bools, integers (numpy's too)
    match integers, real numbers match real numbers, anything else the choice's type."""
    if isinstance(choice, bool) or isinstance(value, bool):
        return isinstance(choice, bool) and isinstance(value, bool)
    if isinstance(choice, numbers.Integral):
        return isinstance(value, numbers.Integral)
    if isinstance(choice, numbers.Real):
        return isinstance(value, numbers.Real)
    return isinstance(value, type(choice))
