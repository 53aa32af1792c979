"""imgaug's parameter grammar, one module for every op: what a spec may be, and its draws.

A spec is what imgaug 0.4 accepts for a stochastic parameter, so recipes written for imgaug
read the same here:

* a number: that value for every image;
* a tuple ``(a, b)``: uniform on ``[a, b]`` per image (the integers ``a..b`` where the
  parameter is discrete and both ends are ints);
* a list ``[v1, v2, ...]``: one of the values per image, each equally likely;
* a dict ``{"x": spec, "y": spec}``: the two axes drawn independently, only where imgaug
  allows it (``Affine`` scale, translate and shear);
* probabilities (``p``, ``per_channel``): a bool or a number in ``[0, 1]``;
* border modes: a name, a list of names (one drawn per image) or :data:`ALL`.

Specs are checked when an op is built, so a bad one fails at once with a one-line
``ValueError`` naming the op and the parameter, never later inside a compiled step. Draws
are stateless (:func:`augment.core.uniform`) and identical eagerly, in ``tf.data`` and under
XLA.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from benchmarks.augment_baseline.core import check_probability, uniform
from benchmarks.augment_baseline.warp import PAD_MODES, materialize, mode_index

# imgaug's ``ia.ALL``: every choice the parameter has (border modes: our five; cval: 0..255).
ALL = "ALL"

GRAMMAR = "a number, a (low, high) tuple or a non-empty list of numbers"


def is_number(value) -> bool:
    """True for an int or float that is not a bool (``True`` is no pixel value)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_range(spec) -> bool:
    return isinstance(spec, tuple) and len(spec) == 2 and all(is_number(v) for v in spec)


def _is_choice(spec) -> bool:
    return isinstance(spec, list) and bool(spec) and all(is_number(v) for v in spec)


def values(spec) -> list:
    """Every value a checked spec names: the number, both ends of a range or the list."""
    if is_number(spec):
        return [spec]
    return list(spec)


def check(spec, name: str, low=None, high=None, dict_ok: bool = False):
    """``spec`` if it is valid for parameter ``name`` (e.g. ``"Multiply mul"``), else ValueError.

    Args:
      spec: the user's value.
      name: the op and parameter, as the error message names them.
      low, high: inclusive bounds every value must respect (``None``: unbounded).
      dict_ok: accept imgaug's ``{"x": .., "y": ..}`` form (checked key by key).
    """
    if dict_ok and isinstance(spec, dict):
        if not spec or not set(spec) <= {"x", "y"}:
            raise ValueError(f"{name}: dict keys must be 'x' and/or 'y', got {list(spec)}")
        for key, sub in spec.items():
            check(sub, f"{name}['{key}']", low, high)
        return spec
    if not (is_number(spec) or _is_range(spec) or _is_choice(spec)):
        extra = ", or an {'x': .., 'y': ..} dict of those" if dict_ok else ""
        raise ValueError(f"{name}: expected {GRAMMAR}{extra}, got {spec!r}")
    if _is_range(spec) and spec[0] > spec[1]:
        raise ValueError(f"{name}: range {spec} has low > high")
    for v in values(spec):
        if (low is not None and v < low) or (high is not None and v > high):
            bounds = (f"in [{low}, {high}]" if low is not None and high is not None
                      else f">= {low}" if low is not None else f"<= {high}")
            raise ValueError(f"{name}: values must be {bounds}, got {spec!r}")
    return spec


def check_xy(spec, name: str, default, low=None, high=None):
    """``(x_spec, y_spec, independent)`` of a spec that may be an ``{"x", "y"}`` dict.

    A dict draws the axes independently (a missing key takes ``default``); any other spec is
    one draw shared by both axes, as imgaug does for ``Affine(scale=(a, b))``.
    """
    check(spec, name, low, high, dict_ok=True)
    if isinstance(spec, dict):
        return spec.get("x", default), spec.get("y", default), True
    return spec, spec, False


def check_modes(mode, name: str) -> tuple:
    """Border-mode spec -> tuple of ``PAD_MODES`` codes (one is drawn per image)."""
    if mode == ALL:
        return tuple(range(len(PAD_MODES)))
    names = [mode] if isinstance(mode, str) else mode
    if not isinstance(names, (list, tuple)) or not names or \
            not all(isinstance(m, str) and m in PAD_MODES for m in names):
        raise ValueError(f"{name}: expected one of {PAD_MODES}, a list of them or 'ALL', "
                         f"got {mode!r}")
    return tuple(mode_index(m) for m in names)


# --------------------------------------------------------------------------------------------
# draws


def from_unit(spec, unit: tf.Tensor, discrete: bool = False) -> tf.Tensor:
    """float32 values of ``spec`` made from uniforms ``unit`` in ``[0, 1)`` (same shape).

    A number ignores ``unit``; ``(a, b)`` maps it linearly (or onto the integers ``a..b``
    when ``discrete`` and both ends are ints, like imgaug's DiscreteUniform); a list picks
    the ``floor(unit * len)``-th value.
    """
    if is_number(spec):
        return tf.fill(tf.shape(unit), tf.constant(float(spec), tf.float32))
    if isinstance(spec, tuple):
        low, high = spec
        if discrete and all(isinstance(v, numbers.Integral) for v in spec):
            return low + tf.minimum(tf.floor(unit * (high - low + 1)), float(high - low))
        return float(low) + float(high - low) * unit
    table = tf.constant([float(v) for v in spec], tf.float32)
    return tf.gather(table, index(unit, len(spec)))


def index(unit: tf.Tensor, n: int) -> tf.Tensor:
    """int32 ``floor(unit * n)`` clipped to ``n - 1``: a uniform choice among ``n``."""
    return tf.minimum(tf.cast(unit * n, tf.int32), n - 1)


def sample(seed, shape, spec, discrete: bool = False) -> tf.Tensor:
    """float32 ``shape`` samples of ``spec`` from ``seed`` (a number draws nothing)."""
    if is_number(spec):
        return tf.fill(shape, tf.constant(float(spec), tf.float32))
    return from_unit(spec, uniform(shape, seed), discrete)


def sample_choice(codes, unit: tf.Tensor) -> tf.Tensor:
    """int32 codes, one of ``codes`` per entry of ``unit``."""
    if len(codes) == 1:
        return tf.fill(tf.shape(unit), tf.constant(codes[0], tf.int32))
    return tf.gather(tf.constant(codes, tf.int32), index(unit, len(codes)))


class Draws:
    """All of one op's random numbers from ONE generator call, handed out column by column.

    One ``[B, columns]`` draw keeps a single Philox expansion in the XLA graph per op (each
    extra generator call costs compile time), and pinning it with
    :func:`augment.warp.materialize` keeps XLA from regenerating it per pixel.
    """

    def __init__(self, seed, batch, columns: int):
        self._unit = materialize(uniform([batch, columns], seed))
        self._columns = columns
        self._next = 0

    def unit(self, width=None):
        """The next column (``[B]``) or ``width`` columns (``[B, width]``) of U[0, 1)."""
        n = 1 if width is None else width
        if self._next + n > self._columns:
            raise AssertionError("Draws: more columns requested than drawn")
        cols = self._unit[:, self._next:self._next + n]
        self._next += n
        return cols[:, 0] if width is None else cols

    def sample(self, spec, width=None, discrete: bool = False) -> tf.Tensor:
        """Values of ``spec`` from the next column(s); every spec consumes its columns."""
        return from_unit(spec, self.unit(width), discrete)

    def choice(self, codes) -> tf.Tensor:
        """One of ``codes`` per image from the next column."""
        return sample_choice(codes, self.unit())


__all__ = ["ALL", "Draws", "GRAMMAR", "check", "check_modes",
           "check_probability", "check_xy", "from_unit", "index", "is_number", "sample",
           "sample_choice", "values"]
