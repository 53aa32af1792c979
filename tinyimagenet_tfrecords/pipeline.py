"""The graph-mode ``tf.data`` input pipeline: a finished build -> ``(images uint8, labels int32)``.

Everything runs as TensorFlow ops inside ``tf.data`` (no ``py_function``, ``numpy_function`` or
Python generators), so the pipeline runs on tf.data's C++ thread pools and never takes the GIL
per example. The order of the stages is chosen for throughput on a few host cores:

1. shard files (or, with fewer files than input pipelines, examples) per input pipeline;
2. read the shards interleaved in parallel; shuffle the small *serialized* records (training);
3. batch **before** parsing: one ``tf.io.parse_example`` per batch is several times cheaper
   than one ``parse_single_example`` per record;
4. decode: ``storage="raw"`` is one ``decode_raw`` + reshape per batch (nearly free);
   ``storage="jpeg"`` decodes each image (JPEG or PNG) with a ``tf.map_fn`` inside the batch's
   map function, always to 3 channels (Tiny ImageNet has grayscale JPEGs);
5. resize to the requested size (Network 1's "indirect augmentation" at 16/32 px) with
   bilinear interpolation, **antialias off**: antialiasing is several times slower (README)
   and not XLA-compilable; for the 2x/4x downscales used, plain bilinear
   averages 2x2 source pixels, already smoother than the seed report's Keras
   ``flow_from_directory(target_size=...)``, whose default is PIL *nearest*. Rounded back to
   uint8; a resize to the stored size is skipped, so the 64 px default costs nothing;
6. training: an endless stream of *data passes*: pass ``p`` reads every example of this input
   pipeline's part exactly once, in an order shuffled with seeds of ``(seed, p)`` only (the
   files, then the records through the shuffle buffer); passes are concatenated and batches
   cut from the stream, so a batch may straddle two passes. The stream can start at any
   example ``K`` (pass ``K // part``, skipping ``K % part`` serialized records before
   parsing), which is how a run resumes at the exact example where it stopped;
7. batch, optional per-batch augmentation (XLA-compiled by default) with
   a stateless seed derived from the pipeline seed, the input pipeline id and the batch
   index, then prefetch.

``storage="raw"`` builds are the faster default on small hosts: decoding is a reshape and the
pipeline runs at the read-and-parse ceiling (1.5 GB on disk for the train split instead of
0.17 GB); ``storage="jpeg"`` decodes every image with libjpeg on each pass (README, "Input
pipeline", for measured figures; ``benchmarks/pipeline.py`` measures them).


Images stay uint8 to the end: 4x less host->device traffic than float32; the model scales
them by 1/255 itself.

Two readers take a build opened once (``manifest.open_build``), each with only the parameters
it uses: :func:`training_stream` (stages 1-7) and :func:`eval_dataset` (stages 1-5, in a
fixed order, last partial batch kept, built once and iterated every epoch).
"""

from __future__ import annotations

import numbers
import os
from typing import Callable, Optional, Sequence

import tensorflow as tf

from tinyimagenet_tfrecords import features
from tinyimagenet_tfrecords import manifest as manifest_lib

AUTOTUNE = tf.data.AUTOTUNE

# Serialized records held by the training shuffle buffer. Tiny ImageNet's converter already
# shuffles examples across shards, so the buffer only has to break up shard-local order;
# 10k JPEG records are ~30 MB (raw: ~120 MB).
DEFAULT_SHUFFLE_BUFFER = 10_000
# Shards read concurrently by the interleave.
DEFAULT_CYCLE_LENGTH = 8

# Only what the pipeline returns or needs to decode; skipping the rest makes parsing cheaper.
# (``image/format`` is not needed: ``storage`` says raw vs encoded, and the encoded bytes carry
# their own JPEG/PNG header.)
_PARSE_KEYS = (features.IMAGE, features.HEIGHT, features.WIDTH, features.LABEL)
PARSE_SPEC = {k: features.PARSE_SPEC[k] for k in _PARSE_KEYS}

Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


# ---------------------------------------------------------------------------------------------
# Per-batch building blocks (public so that benchmarks/pipeline.py measures the same code).
# ---------------------------------------------------------------------------------------------

def parse_batch(serialized: tf.Tensor) -> dict:
    """Parses a ``[B]`` batch of serialized examples with one ``parse_example`` call."""
    return tf.io.parse_example(serialized, PARSE_SPEC)


def _to_uint8(images: tf.Tensor) -> tf.Tensor:
    """Float pixels (0..255) back to uint8, rounded to nearest, not truncated."""
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def resize_images(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize (antialias off) of uint8 ``[..., H, W, 3]`` to ``image_size``, uint8.

    Skipped (the input is returned unchanged) when the images already have that size; the
    check is static when the shape is known, else a ``tf.cond``.
    """
    size = [image_size, image_size]
    hw = images.shape[-3:-1]
    if hw.is_fully_defined():
        if list(hw) == size:
            return images
        return _to_uint8(tf.image.resize(images, size, method="bilinear", antialias=False))
    same = tf.reduce_all(tf.equal(tf.shape(images)[-3:-1], size))
    out = tf.cond(
        same,
        lambda: images,
        lambda: _to_uint8(tf.image.resize(images, size, method="bilinear", antialias=False)))
    return tf.ensure_shape(out, images.shape[:-3].concatenate([image_size, image_size, 3]))


# The one decoder, shared with ``verify`` (a verified build reads identically here).
decode_image = features.decode_image


def decode_batch(parsed: dict, image_size: int, storage: str,
                 stored_hw: Optional[tuple[int, int]] = None) -> tf.Tensor:
    """Decodes and resizes a parsed batch to uint8 ``[B, image_size, image_size, 3]``.

    With ``stored_hw`` (the split's one ``(height, width)``, from its manifest; ``verify``
    checks it) only that decode is traced, and a resize when it is not ``image_size``: a third
    of the three-branch decoder's tracing and start-up. Without it, one branch per *batch*
    (cheap), never per image:
    - every image already ``image_size`` (Tiny ImageNet at 64 px): decode only;
    - all images of one size: decode, then one batched resize;
    - mixed sizes: decode and resize each image.
    ``raw`` storage decodes a uniform batch with a single ``decode_raw`` + reshape; ``jpeg``
    storage decodes image by image with a ``tf.map_fn`` inside the batch's map function.
    """
    data = parsed[features.IMAGE]
    height = tf.cast(parsed[features.HEIGHT], tf.int32)
    width = tf.cast(parsed[features.WIDTH], tf.int32)
    size = image_size

    def decode_uniform(spec_hw):
        if storage == "raw":
            flat = tf.io.decode_raw(data, tf.uint8)
            images = tf.reshape(flat, tf.stack([-1, height[0], width[0], 3]))
        else:
            images = tf.map_fn(
                lambda d: decode_image(d, storage), data,
                fn_output_signature=tf.TensorSpec(spec_hw + [3], tf.uint8))
        return tf.ensure_shape(images, [None] + spec_hw + [3])

    if stored_hw is not None:
        return resize_images(decode_uniform(list(stored_hw)), size)
    uniform = tf.logical_and(tf.reduce_all(tf.equal(height, height[0])),
                             tf.reduce_all(tf.equal(width, width[0])))
    at_size = tf.logical_and(uniform, tf.logical_and(tf.equal(height[0], size),
                                                     tf.equal(width[0], size)))

    def mixed():
        return tf.map_fn(
            lambda x: resize_images(decode_image(x[0], storage, x[1], x[2]), size),
            (data, height, width), fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))

    images = tf.switch_case(
        tf.where(at_size, 0, tf.where(uniform, 1, 2)),
        [lambda: decode_uniform([size, size]),
         lambda: resize_images(decode_uniform([None, None]), size),
         mixed])
    return tf.ensure_shape(images, [None, size, size, 3])


def _labels(parsed: dict) -> tf.Tensor:
    return tf.cast(parsed[features.LABEL], tf.int32)


def batch_seed(seed: int, input_pipeline_id: int, batch_index: tf.Tensor) -> tf.Tensor:
    """The int32 ``[2]`` augmentation seed of one batch: stateless, reproducible, distinct per
    pipeline seed, input pipeline and batch index."""
    base = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int32), tf.constant(input_pipeline_id, tf.int32))
    return tf.random.experimental.stateless_fold_in(base, tf.cast(batch_index, tf.int64))


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------

def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_args(batch_size, image_size, num_input_pipelines, input_pipeline_id, augment):
    if not _positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not _positive_int(image_size):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not _positive_int(num_input_pipelines):
        raise ValueError(f"num_input_pipelines must be >= 1, got {num_input_pipelines!r}")
    if not 0 <= input_pipeline_id < num_input_pipelines:
        raise ValueError(f"input_pipeline_id {input_pipeline_id} not in "
                         f"[0, {num_input_pipelines})")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a callable (images, seed) -> images, got {augment!r}")


def _eval_records(files: Sequence[str], *, num_input_pipelines: int, input_pipeline_id: int,
                  interleave: bool) -> tf.data.Dataset:
    """Serialized records of this input pipeline's part of an evaluation split, in a fixed
    order: up to :data:`DEFAULT_CYCLE_LENGTH` shards interleaved record by record, or (without
    ``interleave``) one shard after another in manifest order.

    Shards files when every pipeline gets at least one, else shards examples of that same
    deterministic record order.
    """
    shard_files = num_input_pipelines > 1 and len(files) >= num_input_pipelines
    if shard_files:
        files = list(files)[input_pipeline_id::num_input_pipelines]
    cycle = max(1, min(len(files), DEFAULT_CYCLE_LENGTH)) if interleave else 1
    ds = tf.data.Dataset.from_tensor_slices(list(files)).interleave(
        tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if num_input_pipelines > 1 and not shard_files:
        ds = ds.shard(num_input_pipelines, input_pipeline_id)
    return ds


def pass_seed(seed, pass_index):
    """The shuffle seed of data pass ``pass_index`` (int64 tensor): a pure function of both, so
    any pass can be rebuilt on its own (resume) without replaying the ones before it."""
    p = tf.cast(pass_index, tf.int64)
    return (tf.constant(seed, tf.int64) * 1_000_003 + p * 7_919 + 12_345) % (2 ** 31 - 1)


def training_records(files: Sequence[str], *, seed: int, start_example: int, part: int,
                     deterministic: bool, num_input_pipelines: int, input_pipeline_id: int,
                     shuffle_buffer: int) -> tf.data.Dataset:
    """The endless training stream of serialized records, from example ``start_example`` on.

    Pass ``p`` reads this pipeline's part once: the files in an order shuffled by
    :func:`pass_seed`, interleaved, then the records through a ``shuffle_buffer`` seeded by
    it too. The order of pass ``p`` depends on ``(seed, p)`` alone, so starting at ``K``
    builds pass ``K // part`` directly and skips ``K % part`` records of it (serialized,
    before any parsing).
    """
    if part < 1:
        raise ValueError("the training split has no examples for this input pipeline")
    first_pass, offset = divmod(int(start_example), int(part))
    n, pid = num_input_pipelines, input_pipeline_id
    shard_files = n > 1 and len(files) >= n
    shard_examples = n > 1 and not shard_files
    if shard_files:
        files = list(files)[pid::n]
    names = tf.constant(list(files))

    def one_pass(p):
        # Dataset.shuffle needs a graph-level seed to accept a tensor op seed (TF compares the
        # pair in Python when the global seed is 0); set here it is this traced function's
        # own graph seed, not the program's.
        tf.random.set_seed(1)
        s = pass_seed(seed, p)
        order = tf.random.experimental.stateless_shuffle(names, seed=tf.stack([s, -1]))
        ds = tf.data.Dataset.from_tensor_slices(order).interleave(
            tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), DEFAULT_CYCLE_LENGTH)),
            block_length=1, num_parallel_calls=AUTOTUNE,
            # Sharding examples needs the same record order in every pipeline.
            deterministic=True if shard_examples else deterministic)
        if shard_examples:
            ds = ds.shard(n, pid)
        return ds.shuffle(shuffle_buffer, seed=s + 1, reshuffle_each_iteration=False)

    passes = tf.data.Dataset.range(first_pass, 2 ** 62).flat_map(one_pass)
    return passes.skip(offset) if offset else passes


# ---------------------------------------------------------------------------------------------
# The two readers of an opened build.
# ---------------------------------------------------------------------------------------------

def _opened(build) -> manifest_lib.Build:
    if not isinstance(build, manifest_lib.Build):
        raise TypeError(f"expected a build from manifest.open_build, got {build!r}")
    return build


def _split_files(build: manifest_lib.Build, split: str) -> list[str]:
    files = list(build.split(split).paths)
    if not files:
        raise manifest_lib.BuildError(f"{build.path}: split {split!r} has no shards")
    return files


def _decoder(image_size: int, storage: str, with_filenames: bool = False,
             stored_hw: Optional[tuple[int, int]] = None):
    """The per-batch map: serialized ``[B]`` -> (images uint8, labels int32[, filenames])."""
    spec = dict(PARSE_SPEC, **({features.FILENAME: features.PARSE_SPEC[features.FILENAME]}
                               if with_filenames else {}))

    @tf.autograph.experimental.do_not_convert
    def decode(serialized):
        parsed = tf.io.parse_example(serialized, spec) if with_filenames else \
            parse_batch(serialized)
        out = (decode_batch(parsed, image_size, storage, stored_hw), _labels(parsed))
        return out + (parsed[features.FILENAME],) if with_filenames else out
    return decode


def _augmented(ds: tf.data.Dataset, augment: Augment, *, jit_augment: bool, seed: int,
               input_pipeline_id: int, deterministic: bool) -> tf.data.Dataset:
    """Applies ``augment`` to whole batches with :func:`batch_seed` of the batch index."""
    augment_fn = (tf.function(augment, jit_compile=True, autograph=False)
                  if jit_augment else augment)

    # Traced as written, not autograph-converted: converting a large callable is slow and
    # can break code not written for it. A callable that needs Python control flow on
    # tensors can be a tf.function (which converts itself).
    @tf.autograph.experimental.do_not_convert
    def apply_augment(index, batch):
        images, labels = batch
        out = augment_fn(images, batch_seed(seed, input_pipeline_id, index))
        return tf.ensure_shape(out, images.shape), labels
    return ds.enumerate().map(apply_augment, num_parallel_calls=AUTOTUNE,
                              deterministic=deterministic)


def training_stream(build: manifest_lib.Build, *, batch_size: int, image_size: int, seed: int,
                    start_example: int = 0, num_input_pipelines: int = 1,
                    input_pipeline_id: int = 0, deterministic: bool = True,
                    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                    augment: Optional[Augment] = None,
                    jit_augment: bool = True) -> tf.data.Dataset:
    """The endless training stream of the train split: ``(images uint8 [B, S, S, 3], labels
    int32 [B])``, full batches only, from example ``start_example`` of this part on.

    Data passes as :func:`training_records` (pass p shuffled by (seed, p) alone), cut into
    batches that may straddle two passes; a resumed run starts at the example it stopped at.

    Args:
      build: the opened build (:func:`manifest.open_build`); its manifest is not read again.
      batch_size: examples per batch of this part (per replica under a strategy).
      image_size: output side S (bilinear, antialias off, rounded; skipped at the stored size).
      seed: seeds the passes' shuffles and the per-batch augmentation seeds.
      start_example: where this part's stream starts, in its own examples.
      num_input_pipelines, input_pipeline_id: this part: whole shard files when there are at
        least as many files as parts, else every n-th example.
      deterministic: False lets parallel stages emit out of order (not reproducible).
      shuffle_buffer: serialized records in the per-pass shuffle buffer.
      augment: ``(images, seed int32 [2]) -> images`` per batch, seeded by
        :func:`batch_seed` of (seed, input_pipeline_id, batch index); for the benchmarks (the
        fit loop augments inside its train step).
      jit_augment: compile ``augment`` with XLA inside tf.data; False for ops XLA lacks.

    Raises:
      manifest.BuildError: the build has no train split. ValueError, TypeError: bad arguments.
    """
    build = _opened(build)
    _check_args(batch_size, image_size, num_input_pipelines, input_pipeline_id, augment)
    if not isinstance(start_example, numbers.Integral) or start_example < 0:
        raise ValueError(f"start_example must be an int >= 0, got {start_example!r}")
    files = _split_files(build, "train")
    ds = training_records(
        files, seed=seed, start_example=int(start_example),
        part=build.split("train").part_size(num_input_pipelines, input_pipeline_id),
        deterministic=bool(deterministic), num_input_pipelines=num_input_pipelines,
        input_pipeline_id=input_pipeline_id, shuffle_buffer=shuffle_buffer)
    ds = ds.batch(int(batch_size), drop_remainder=True).map(
        _decoder(int(image_size), build.storage,
                 stored_hw=build.split("train").uniform_size),
        num_parallel_calls=AUTOTUNE, deterministic=bool(deterministic))
    if augment is not None:
        ds = _augmented(ds, augment, jit_augment=jit_augment, seed=seed,
                        input_pipeline_id=input_pipeline_id, deterministic=bool(deterministic))
    return ds.prefetch(AUTOTUNE).with_options(_options(bool(deterministic)))


def eval_dataset(build: manifest_lib.Build, split: str, *, batch_size: int, image_size: int,
                 num_input_pipelines: int = 1, input_pipeline_id: int = 0,
                 with_filenames: bool = False, interleave: bool = True) -> tf.data.Dataset:
    """A deterministic pass over every example of this part of ``split`` once, keeping the
    last partial batch: ``(images uint8 [B, S, S, 3], labels int32 [B])``.

    Build it once per (split, size, batch) and iterate it every epoch: each iteration
    restarts it and yields the same batches. Its order does not depend on ``batch_size``, so
    the misclassified grid picks images by index from the reader evaluation used.

    Args:
      build: the opened build (:func:`manifest.open_build`).
      split: any built split (test labels are -1).
      batch_size, image_size: examples per batch and output side (see
        :func:`training_stream`).
      num_input_pipelines, input_pipeline_id: this part (e.g. one worker's share).
      with_filenames: also yield each example's ``filename`` (string ``[B]``), for
        predictions.
      interleave: read up to :data:`DEFAULT_CYCLE_LENGTH` shards at once, record by record
        (evaluation's order); False reads the shards one after another in manifest order
        (predictions list the files in that order).

    Raises:
      manifest.BuildError: ``split`` not built. ValueError: bad arguments.
    """
    build = _opened(build)
    _check_args(batch_size, image_size, num_input_pipelines, input_pipeline_id, None)
    ds = _eval_records(_split_files(build, split), num_input_pipelines=num_input_pipelines,
                       input_pipeline_id=input_pipeline_id, interleave=bool(interleave))
    ds = ds.batch(int(batch_size)).map(
        _decoder(int(image_size), build.storage, with_filenames,
                 stored_hw=build.split(split).uniform_size),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options(True))


def dataset_options(deterministic: bool) -> tf.data.Options:
    """tf.data settings of every pipeline here: one parallel call per core, map
    parallelization, prefetch buffers sized by TensorFlow.

    TensorFlow's autotune optimizer is off: freeing an iterator waits for that optimizer's
    thread to wake from its sleep, which grows to a minute, with the GIL held; it held up the
    end of a run (README, "Input pipeline"), and a phase change frees one too. Stages then run
    ``AUTOTUNE`` at ``initial_parallelism``, one call per core, the parallelism autotune
    budgets; prefetch buffers keep TensorFlow's own sizing, which does not use that thread.

    Public so that benchmarks time their stages with the pipeline's own settings. Threading
    stays at TF's defaults, measured rather than assumed (README, "Input pipeline"): a private
    or single-threaded intra-op pool slowed the XLA-compiled augmentation, whose kernels use
    the intra-op pool, and would compete with the training step's.
    """
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = False
    options.autotune.initial_parallelism = _cores()
    options.experimental_optimization.map_parallelization = True
    return options


def _cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under a container's limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_options = dataset_options
