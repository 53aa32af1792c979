"""imgaug's combinators, batched: ``Sometimes``, ``Sequential``, ``SomeOf``, ``Identity``.

Under XLA every branch is computed for the whole batch and ``tf.where`` keeps, per image,
the branch that image drew: on a 64x64 batch this costs less than gathering sub-batches and
keeps shapes static. ``Sequential(random_order=True)`` draws one permutation per batch (an
argsort of stateless uniforms) and runs position ``i`` through ``tf.switch_case(perm[i])``,
so only one op per position executes.

Integer inputs are quantised after every child with that child's own rounding (see
``core.quantize``), which is what an all-uint8 imgaug pipeline does between ops.
"""

from __future__ import annotations

import tensorflow as tf

from benchmarks.augment_baseline.core import (Augmenter, as_seed, bernoulli, check_probability, from_float,
                          quantize, split_seed, to_float, uniform)


def run_child(child: Augmenter, images: tf.Tensor, seed: tf.Tensor, dtype: tf.DType):
    """``child`` on float32 ``images`` as if they were held in ``dtype`` between ops."""
    if isinstance(child, Combinator):
        return child.apply_as(images, seed, dtype)
    return quantize(child.apply(images, seed), dtype, getattr(child, "ROUNDING", "round"))


class Combinator(Augmenter):
    """An Augmenter made of children; keeps the caller's dtype semantics down the tree."""

    def __call__(self, images, seed):
        images = tf.convert_to_tensor(images)
        return from_float(self.apply_as(to_float(images), as_seed(seed), images.dtype),
                          images.dtype)

    def apply(self, images, seed):
        return self.apply_as(images, seed, tf.float32)

    def apply_as(self, images, seed, dtype):  # pragma: no cover
        raise NotImplementedError


def _select(chosen: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    return tf.where(chosen[:, None, None, None], new, old)


class Identity(Augmenter):
    """imgaug ``Identity``/``Noop``: returns the batch unchanged (the ``none`` recipe)."""

    def __call__(self, images, seed):
        return tf.convert_to_tensor(images)

    def apply(self, images, seed):
        return images


class Sometimes(Combinator):
    """imgaug ``Sometimes(p, then_list, else_list)``: one Bernoulli(p) per image."""

    def __init__(self, p, then_list, else_list=None):
        self.p = check_probability(p, "Sometimes p")
        self.then_list = _as_augmenter(then_list)
        self.else_list = None if else_list is None else _as_augmenter(else_list)

    def apply_as(self, images, seed, dtype):
        s_coin, s_then, s_else = tf.unstack(split_seed(seed, 3))
        chosen = bernoulli(s_coin, [tf.shape(images)[0]], self.p)
        then = run_child(self.then_list, images, s_then, dtype)
        other = images if self.else_list is None else run_child(self.else_list, images,
                                                                s_else, dtype)
        return _select(chosen, then, other)


class Sequential(Combinator):
    """imgaug ``Sequential(children, random_order)``.

    With ``random_order`` one permutation is drawn per batch; each child always receives the
    same sub-seed whatever its position, so the order is the only thing that changes.
    """

    def __init__(self, children, random_order=False):
        self.children = [_as_augmenter(c) for c in children]
        self.random_order = random_order

    def apply_as(self, images, seed, dtype):
        n = len(self.children)
        if n == 0:
            return images
        seeds = split_seed(seed, n + 1)
        if self.random_order:
            order = tf.argsort(uniform([n], seeds[n]))
        else:
            order = tf.range(n)
        steps = [_seeded(child, seeds[k], dtype) for k, child in enumerate(self.children)]
        return chain(steps, order, images)


def _seeded(child, seed, dtype):
    return lambda x: run_child(child, x, seed, dtype)


def chain(steps, order, images):
    """``images`` through ``steps[order[0]]``, then ``steps[order[1]]``, ... (XLA-friendly).

    A ``tf.while_loop`` over positions with a ``tf.switch_case`` on ``order[i]``: each step
    is compiled once whatever the order, and every step's output is materialised. Chaining
    the steps as plain ops lets XLA fuse a warp's gathers into the next warp's, recomputing
    the whole upstream chain per tap (README, "Augmentation": an order of magnitude slower).
    """
    n = len(steps)
    if n == 1:
        return steps[0](images)

    def body(i, x):
        branches = [_bind(step, x) for step in steps]
        return i + 1, tf.ensure_shape(tf.switch_case(order[i], branches), images.shape)

    _, out = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), images),
                           maximum_iterations=n)
    return out


def _bind(step, x):
    # Binds the loop variables now; tf.switch_case calls the branch later.
    return lambda: step(x)


class SomeOf(Combinator):
    """imgaug ``SomeOf(n, children, random_order=False)``.

    Per image a count of children, then a random subset of that size (the ranks of
    stateless uniforms below the count), applied in list order. ``n`` follows imgaug: an int
    (exactly that many), ``(lo, hi)`` (uniform on ``lo..hi``; ``hi=None``: all children) or
    a list of ints (one of them per image).
    """

    def __init__(self, n, children, random_order=False):
        self.children = [_as_augmenter(c) for c in children]
        self.n = n
        self._counts = _counts(n, len(self.children))
        if random_order:
            raise NotImplementedError("SomeOf(random_order=True) is not implemented; wrap the "
                                      "children in Sequential(random_order=True) instead")
        self.random_order = False

    def active_mask(self, seed, batch) -> tf.Tensor:
        """``[B, K]`` bool: which children each image gets (a count per image, uniform subset)."""
        s_n, s_subset = tf.unstack(split_seed(seed, 2))
        k = len(self.children)
        unit = uniform([batch, 1], s_n)
        if isinstance(self._counts, tuple):  # a range: lo + floor(u * (hi - lo + 1))
            lo, hi = self._counts
            count = lo + tf.cast(unit * (hi - lo + 1), tf.int32)
        else:  # a list: one of its counts
            choice = tf.minimum(tf.cast(unit * len(self._counts), tf.int32),
                                len(self._counts) - 1)
            count = tf.gather(tf.constant(self._counts, tf.int32), choice)
        order = uniform([batch, k], s_subset)
        ranks = tf.argsort(tf.argsort(order, axis=1), axis=1)
        return ranks < count

    def apply_as(self, images, seed, dtype):
        k = len(self.children)
        if k == 0:
            return images
        seeds = split_seed(seed, k + 1)
        active = self.active_mask(seeds[k], tf.shape(images)[0])
        steps = [_masked(child, seeds[j], dtype, active[:, j])
                 for j, child in enumerate(self.children)]
        return chain(steps, tf.range(k), images)


def _masked(child, seed, dtype, chosen):
    return lambda x: _select(chosen, run_child(child, x, seed, dtype), x)


def _counts(n, children: int):
    """``SomeOf``'s ``n`` as ``(lo, hi)`` (a range) or a list of counts, clipped to ``children``."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(n):
        n = (n, n)
    if isinstance(n, tuple) and len(n) == 2 and is_int(n[0]) and (n[1] is None or is_int(n[1])):
        lo, hi = n[0], children if n[1] is None else n[1]
        if 0 <= lo <= hi:
            return (min(lo, children), min(hi, children))
    elif isinstance(n, list) and n and all(is_int(v) and v >= 0 for v in n):
        return [min(v, children) for v in n]
    raise ValueError(f"SomeOf n: expected an int >= 0, a (low, high) tuple (high may be None) "
                     f"or a list of ints, got {n!r}")


def _as_augmenter(child):
    if isinstance(child, Augmenter):
        return child
    if isinstance(child, (list, tuple)):
        return Sequential(list(child))
    raise TypeError(f"expected an Augmenter or a list of them, got {child!r}")
