"""Kubernetes resource quantities (``500m``, ``16Gi``, ``1.5``, ``2e3``) as integer milli-units.

Every quantity inside the queue is an ``int`` counting thousandths of the base unit: ``"500m"`` CPU is 500,
``"1"`` GPU is 1000, ``"0.25"`` GPU is 250 and ``"1Ki"`` memory is 1,024,000. Integers keep quota arithmetic
exact and fast; values finer than a milli-unit are rounded up, as Kubernetes does.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from capstan.errors import InvalidParameterValue

MILLI = 1000
"""Milli-units per whole unit."""

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
MAX_UNITS = Decimal("1e21")
"""The largest quantity accepted, in whole units (about 867 EiB of memory): beyond it a value is a typo."""
MEMORY_RESOURCES = frozenset({"memory", "ephemeral-storage"})
GPU_RESOURCES = frozenset({"gpu", "nvidia.com/gpu", "amd.com/gpu"})


def parse_quantity(value: object, *, path: str = "quantity") -> int:
    """Parse a quantity into milli-units; ``path`` names the field in the error message.

    Accepts ints, floats and strings with a decimal (``m``, ``k``, ``M``, ``G``...) or binary (``Ki``, ``Mi``,
    ``Gi``...) suffix or an exponent (``1e3``). Negative, empty and non-numeric values are rejected.
    """
    if isinstance(value, bool):
        raise InvalidParameterValue(f"{path}: {value!r} is not a quantity such as 500m, 2, 1.5 or 16Gi")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParameterValue(f"{path}: {value!r} is not a finite quantity")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        number = _parse_text(value.strip(), path)
    else:
        raise InvalidParameterValue(f"{path}: {value!r} is not a quantity such as 500m, 2, 1.5 or 16Gi")
    if number < 0:
        raise InvalidParameterValue(f"{path}: quantity {_short(value)} must not be negative")
    if number > MAX_UNITS:
        raise InvalidParameterValue(f"{path}: quantity {_short(value)} is too large (at most {MAX_UNITS:.0e} units)")
    return int((number * MILLI).to_integral_value(rounding="ROUND_CEILING"))


def _short(value: object) -> str:
    """``value`` for a message, cut to a readable length (never echo a 400-digit number)."""
    text = repr(value)
    if len(text) <= 24:
        return text
    return text[:20] + ("...'" if text[0] in "'\"" else "...")


def _parse_text(text: str, path: str) -> Decimal:
    def bad() -> InvalidParameterValue:
        return InvalidParameterValue(f"{path}: {_short(text)} is not a quantity such as 500m, 2, 1.5 or 16Gi")

    if not text:
        raise bad()
    multiplier: Decimal
    if text[-2:] in _BINARY:
        digits, multiplier = text[:-2], Decimal(_BINARY[text[-2:]])
    elif text[-1:] in _DECIMAL and not text[-1:].isdigit() and text[-1:] != "":
        digits, multiplier = text[:-1], _DECIMAL[text[-1:]]
    else:
        digits, multiplier = text, Decimal(1)
    if not digits or digits[-1] in "eE+-" or any(c not in "0123456789.eE+-" for c in digits):
        raise bad()
    try:
        number = Decimal(digits)
    except InvalidOperation:
        raise bad() from None
    if not number.is_finite():
        raise bad()
    if number and number.adjusted() > 40:  # keeps the arithmetic below within the decimal context's exponent range
        if number < 0:
            raise InvalidParameterValue(f"{path}: quantity {_short(text)} must not be negative")
        raise InvalidParameterValue(f"{path}: quantity {_short(text)} is too large (at most {MAX_UNITS:.0e} units)")
    if number and number.adjusted() < -40:
        number = Decimal("1e-40").copy_sign(number)  # rounds to the same milli-unit either way
    return number * multiplier


def format_quantity(milli: int, resource: str = "") -> str:
    """Render milli-units for people: ``16Gi`` for memory, ``0.25`` / ``2`` for GPUs and CPUs."""
    if resource in MEMORY_RESOURCES:
        whole = milli / MILLI
        for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if whole >= factor:
                return f"{_trim(whole / factor)}{suffix}"
        return _trim(whole)
    if milli % MILLI == 0:
        return str(milli // MILLI)
    if resource == "cpu" and milli < MILLI:
        return f"{milli}m"
    return _trim(milli / MILLI)


def format_bytes(size: int) -> str:
    """A measured byte count for people, to three significant digits: ``209Mi``, ``1.5Gi``, ``98.5Mi``, ``512``
    (a peak is a measurement: ``208.703Mi`` claims a precision it does not have)."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= factor:
            return f"{float(f'{size / factor:.3g}'):g}{suffix}"
    return str(size)


def _trim(number: float) -> str:
    text = f"{number:.3f}".rstrip("0").rstrip(".")
    return text or "0"
