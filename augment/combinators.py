"""imgaug's combinators, batched: ``Sometimes``, ``Sequential``, ``SomeOf``, ``Identity``.

Only the images a ``Sometimes`` picks (or a ``SomeOf`` child reaches) are computed: every
parameter is drawn for the whole batch first (:meth:`Augmenter.draw`, cheap), then the chosen
images are moved to the front (a stable argsort of the coin flips) and rendered in fixed-size
chunks in a ``tf.while_loop`` until all are done, each chunk with the rows of the parameters
its images own (:func:`on_subset`). Shapes stay static for XLA and every image gets exactly the
draws, and so the pixels, it got when the whole batch was computed and ``tf.where`` picked.
This is done for children that are themselves combinators (a chain: ``student_net2``); a
single op says through ``SUBSET_PAYS`` that it is cheaper to compute it for every image and
select (measured; README), and children that only implement ``apply`` fall back to that too.
``Sequential(random_order=True)`` draws one permutation per batch (an argsort of stateless
uniforms) and runs position ``i`` through ``tf.switch_case(perm[i])``, so only one op per
position executes.

Integer inputs are quantised after every child with that child's own rounding (see
``core.quantize``), which is what an all-uint8 imgaug pipeline does between ops.
"""

from __future__ import annotations

import tensorflow as tf

from augment.core import (Augmenter, Shared, as_seed, bernoulli, check_probability,
                          from_float, quantize, split_seed, take_rows, to_float, uniform)

# Images per chunk of on_subset: small enough that the padding of the last chunk wastes
# little, large enough that the loop's per-iteration cost stays small (benchmarks.augment).
CHUNK = 32


def run_child(child: Augmenter, images: tf.Tensor, seed: tf.Tensor, dtype: tf.DType):
    """``child`` on float32 ``images`` as if they were held in ``dtype`` between ops."""
    if isinstance(child, Combinator):
        return child.apply_as(images, seed, dtype)
    return quantize(child.apply(images, seed), dtype, getattr(child, "ROUNDING", "round"))


def render_child(child: Augmenter, images: tf.Tensor, params, dtype: tf.DType):
    """:func:`run_child` with parameters already drawn (``child.draw``, maybe some rows)."""
    if isinstance(child, Combinator):
        return child.render_as(images, params, dtype)
    return quantize(child.render(images, params), dtype, getattr(child, "ROUNDING", "round"))


def on_subset(images: tf.Tensor, chosen: tf.Tensor, fn, chunk: int = CHUNK) -> tf.Tensor:
    """``images`` with ``fn(rows_images, rows)`` in place of the rows where ``chosen`` is True.

    The chosen rows are moved first (stable argsort) and processed ``chunk`` at a time in a
    ``tf.while_loop`` that stops after the last chosen one; a chunk's unused slots point at a
    spare row past the batch, which is dropped at the end. Static shapes, so XLA compiles it.

    Args:
      images: float32 ``[B, H, W, C]``.
      chosen: bool ``[B]``.
      fn: ``(images [n, H, W, C], rows int32 [n]) -> [n, H, W, C]`` for the batch rows
        ``rows`` (use :func:`augment.core.take_rows` to give them their parameters).
      chunk: images per loop iteration (at most the static batch size).
    """
    batch = tf.shape(images)[0]
    if images.shape[0] is not None:
        chunk = max(1, min(chunk, int(images.shape[0])))
    order = tf.argsort(tf.cast(tf.logical_not(chosen), tf.int32), stable=True)
    count = tf.reduce_sum(tf.cast(chosen, tf.int32))
    order = tf.concat([order, tf.fill([chunk], batch)], 0)
    spare = tf.zeros_like(images[:1])
    out = tf.concat([images, spare], 0)
    slots = tf.range(chunk)

    def body(i, out):
        start = i * chunk
        rows = tf.where(start + slots < count, tf.slice(order, [start], [chunk]), batch)
        src = tf.minimum(rows, batch - 1)
        result = fn(tf.gather(images, src), src)
        return i + 1, tf.tensor_scatter_nd_update(out, rows[:, None], result)

    _, out = tf.while_loop(lambda i, _: i * chunk < count, body, (tf.constant(0), out))
    return out[:batch]


class Combinator(Augmenter):
    """An Augmenter made of children; keeps the caller's dtype semantics down the tree."""

    SUBSET_PAYS = True

    @tf.autograph.experimental.do_not_convert
    def __call__(self, images, seed):
        images = tf.convert_to_tensor(images)
        return from_float(self.apply_as(to_float(images), as_seed(seed), images.dtype),
                          images.dtype)

    def apply(self, images, seed):
        return self.apply_as(images, seed, tf.float32)

    def apply_as(self, images, seed, dtype):
        """The combinator on float32 ``images`` held as ``dtype`` between ops.

        Trees with no subset to render (only single ops under each Sometimes/SomeOf) take the
        old path, drawing inside each op: drawing everything first measured slower there.
        """
        if not self.can_split() or not self.uses_subset():
            return self.apply_all(images, seed, dtype)
        params = self.draw(seed, tf.shape(images)[0], tuple(images.shape[1:]))
        return self.render_as(images, params, dtype)

    def render(self, images, params):
        return self.render_as(images, params, tf.float32)

    def render_as(self, images, params, dtype):  # pragma: no cover
        raise NotImplementedError

    def apply_all(self, images, seed, dtype):  # pragma: no cover
        """The fallback for children without draw/render: every child on every image."""
        raise NotImplementedError

    def can_split(self) -> bool:
        return all(child.can_split() for child in self.child_list())

    def renders_subset(self) -> bool:
        """True when this combinator itself renders chosen rows (a Sometimes/SomeOf of chains)."""
        return False

    def uses_subset(self) -> bool:
        """True when this combinator or one below it renders a chosen subset of the batch."""
        return self.renders_subset() or any(
            isinstance(c, Combinator) and c.uses_subset() for c in self.child_list())

    def child_list(self):  # pragma: no cover
        raise NotImplementedError


def _select(chosen: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    return tf.where(chosen[:, None, None, None], new, old)


class Identity(Augmenter):
    """imgaug ``Identity``/``Noop``: returns the batch unchanged (the ``none`` recipe)."""

    @tf.autograph.experimental.do_not_convert
    def __call__(self, images, seed):
        return tf.convert_to_tensor(images)

    def apply(self, images, seed):
        return images

    def draw(self, seed, batch, shape):
        return {}

    def render(self, images, params):
        return images


class Sometimes(Combinator):
    """imgaug ``Sometimes(p, then_list, else_list)``: one Bernoulli(p) per image."""

    def __init__(self, p, then_list, else_list=None):
        self.p = check_probability(p, "Sometimes p")
        self.then_list = _as_augmenter(then_list)
        self.else_list = None if else_list is None else _as_augmenter(else_list)

    def child_list(self):
        return [self.then_list] + ([] if self.else_list is None else [self.else_list])

    def renders_subset(self):
        return any(c.SUBSET_PAYS for c in self.child_list())

    def draw(self, seed, batch, shape):
        s_coin, s_then, s_else = tf.unstack(split_seed(seed, 3))
        return {"chosen": bernoulli(s_coin, [batch], self.p),
                "then": self.then_list.draw(s_then, batch, shape),
                "else": None if self.else_list is None else self.else_list.draw(s_else, batch,
                                                                                shape)}

    def render_as(self, images, params, dtype):
        chosen = params["chosen"]
        if self.p >= 1.0 and self.else_list is None:  # every image: no rows to pick
            return render_child(self.then_list, images, params["then"], dtype)
        if self.p <= 0.0 and self.else_list is None:
            return images
        out = _render_rows(self.then_list, images, chosen, params["then"], dtype)
        if self.else_list is not None:
            out = _render_rows(self.else_list, out, tf.logical_not(chosen), params["else"],
                               dtype)
        return out

    def apply_all(self, images, seed, dtype):
        s_coin, s_then, s_else = tf.unstack(split_seed(seed, 3))
        chosen = bernoulli(s_coin, [tf.shape(images)[0]], self.p)
        then = run_child(self.then_list, images, s_then, dtype)
        other = images if self.else_list is None else run_child(self.else_list, images,
                                                                s_else, dtype)
        return _select(chosen, then, other)


def _render_rows(child, images, chosen, params, dtype):
    """``child`` rendered on the ``chosen`` rows only, each with its own parameters.

    Ops that say a subset does not pay (``SUBSET_PAYS``) are rendered on every image and
    selected, which gives the same pixels.
    """
    if not child.SUBSET_PAYS:
        return _select(chosen, render_child(child, images, params, dtype), images)
    return on_subset(images, chosen, lambda x, rows: render_child(
        child, x, take_rows(params, rows), dtype))


class Sequential(Combinator):
    """imgaug ``Sequential(children, random_order)``.

    With ``random_order`` one permutation is drawn per batch; each child always receives the
    same sub-seed whatever its position, so the order is the only thing that changes.
    """

    def __init__(self, children, random_order=False):
        self.children = [_as_augmenter(c) for c in children]
        self.random_order = random_order

    def child_list(self):
        return self.children

    def _order(self, seeds):
        n = len(self.children)
        return tf.argsort(uniform([n], seeds[n])) if self.random_order else tf.range(n)

    def draw(self, seed, batch, shape):
        n = len(self.children)
        if n == 0:
            return {}
        seeds = split_seed(seed, n + 1)
        return {"order": Shared(self._order(seeds)),
                "children": [c.draw(seeds[k], batch, shape)
                             for k, c in enumerate(self.children)]}

    def render_as(self, images, params, dtype):
        if not self.children:
            return images
        steps = [_drawn(child, p, dtype) for child, p in zip(self.children, params["children"])]
        return chain(steps, params["order"].value, images)

    def apply_all(self, images, seed, dtype):
        n = len(self.children)
        if n == 0:
            return images
        seeds = split_seed(seed, n + 1)
        steps = [_seeded(child, seeds[k], dtype) for k, child in enumerate(self.children)]
        return chain(steps, self._order(seeds), images)


def _drawn(child, params, dtype):
    return lambda x: render_child(child, x, params, dtype)


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

    def child_list(self):
        return self.children

    def renders_subset(self):
        return any(c.SUBSET_PAYS for c in self.children)

    def draw(self, seed, batch, shape):
        k = len(self.children)
        if k == 0:
            return {}
        seeds = split_seed(seed, k + 1)
        return {"active": self.active_mask(seeds[k], batch),
                "children": [c.draw(seeds[j], batch, shape)
                             for j, c in enumerate(self.children)]}

    def render_as(self, images, params, dtype):
        if not self.children:
            return images
        active = params["active"]
        steps = [_subset(child, p, dtype, active[:, j])
                 for j, (child, p) in enumerate(zip(self.children, params["children"]))]
        return chain(steps, tf.range(len(steps)), images)

    def apply_all(self, images, seed, dtype):
        k = len(self.children)
        if k == 0:
            return images
        seeds = split_seed(seed, k + 1)
        active = self.active_mask(seeds[k], tf.shape(images)[0])
        steps = [_masked(child, seeds[j], dtype, active[:, j])
                 for j, child in enumerate(self.children)]
        return chain(steps, tf.range(k), images)


def _subset(child, params, dtype, chosen):
    return lambda x: _render_rows(child, x, chosen, params, dtype)


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
