"""Export a trained model as a TensorFlow SavedModel that serves encoded images.

``python -m training.export --model runs/x/best.keras --out exported/x`` (and ``training.run``
at the end of every training, into ``<out>/export/``) writes a SavedModel that loads with
TensorFlow alone (``tf.saved_model.load``; no project code, no custom objects) with two
signatures:

- ``serving_default(images: string [B])``: encoded JPEG/PNG/GIF/BMP/WebP bytes, decoded in the
  graph; the input TensorFlow Serving's REST API fills from ``{"instances": [{"b64": ...}]}``;
- ``serve_pixels(pixels: uint8 [B, H, W, C])``: decoded pixels of any size, C = 1, 3 or 4.

Both do what evaluation does to an image (:func:`preprocess_bytes`): JPEG with the accurate
IDCT of the build's decoder, grey -> RGB, alpha dropped, bilinear resize (antialias off,
rounded to uint8) to the model's input size, unless the image already has it; the model
scales pixels itself. Outputs: ``probabilities`` float32 ``[B, N]``, ``top5_indices`` int32,
``top5_probabilities``, ``top5_wnids`` and ``top5_names`` (strings): the class list is a
constant of the graph.
"""

from __future__ import annotations

import os

from plumbing import paths
from training import classes as classes_lib
from training.errors import RunError, RunFailure

TOP_K = 5
DEFAULT_IMAGE_SIZE = 64
SIGNATURE_BYTES = "serving_default"
SIGNATURE_PIXELS = "serve_pixels"


def decode_encoded(encoded, image_size: int):
    """One encoded image (scalar string) -> uint8 ``[S, S, 3]``, as evaluation sees it.

    JPEG goes through ``decode_jpeg`` with ``INTEGER_ACCURATE`` (the build's decoder, equal to
    PIL's), everything else through ``decode_image`` (no animation: a GIF's first frame);
    16-bit PNGs are scaled to 8 bits by the decoder.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tinyimagenet_tfrecords import pipeline  # pylint: disable=import-outside-toplevel
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                                   expand_animations=False))
    image = tf.ensure_shape(image, [None, None, 3])
    return tf.ensure_shape(pipeline.resize_images(image, image_size),
                           [image_size, image_size, 3])


def preprocess_bytes(encoded, image_size: int):
    """A ``[B]`` batch of encoded images -> uint8 ``[B, S, S, 3]``."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.map_fn(lambda e: decode_encoded(e, image_size), encoded,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))


def preprocess_pixels(pixels, image_size: int):
    """uint8 ``[B, H, W, C]`` (C = 1, 3 or 4) -> uint8 ``[B, S, S, 3]``."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tinyimagenet_tfrecords import pipeline  # pylint: disable=import-outside-toplevel
    channels = tf.shape(pixels)[-1]
    rgb = tf.cond(channels < 3, lambda: tf.tile(pixels[..., :1], [1, 1, 1, 3]),
                  lambda: pixels[..., :3])
    rgb = tf.ensure_shape(rgb, [None, None, None, 3])
    return tf.ensure_shape(pipeline.resize_images(rgb, image_size),
                           [None, image_size, image_size, 3])


def make_outputs_fn(model, record: dict):
    """``images uint8 [B, S, S, 3] -> dict`` of the signatures' outputs."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    wnids = tf.constant(record["wnids"])
    names = tf.constant(record["names"])
    k = min(TOP_K, len(record["wnids"]))

    def outputs(images):
        probs = tf.cast(model(images, training=False), tf.float32)
        top = tf.math.top_k(probs, k=k)
        return {"probabilities": probs, "top5_indices": top.indices,
                "top5_probabilities": top.values,
                "top5_wnids": tf.gather(wnids, top.indices),
                "top5_names": tf.gather(names, top.indices)}
    return outputs


def serving_functions(model, record: dict, image_size: int) -> dict:
    """``{signature name: tf.function}`` with fixed input signatures (also used in-process by
    ``training.predict`` for a ``.keras`` model, so both give the same numbers)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    outputs = make_outputs_fn(model, record)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_bytes(images):
        return outputs(preprocess_bytes(images, image_size))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                                name="pixels")])
    def serve_pixels(pixels):
        return outputs(preprocess_pixels(pixels, image_size))

    return {SIGNATURE_BYTES: serve_bytes, SIGNATURE_PIXELS: serve_pixels}


def model_image_size(model, record: dict | None, requested: int | None = None) -> int:
    """The model's fixed input size; for a model taking any size: ``requested``, else the
    size it was evaluated at (its class record), else 64."""
    shape = tuple(model.input_shape)
    if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
        if requested is not None and requested != shape[1]:
            raise RunError(f"--image_size={requested}: the model takes {shape[1]} px inputs")
        return int(shape[1])
    if requested is not None:
        return int(requested)
    return int((record or {}).get("image_size") or DEFAULT_IMAGE_SIZE)


def load_keras_with_classes(model_path: str):
    """``(model, record)`` of a ``.keras`` file; RunError (one line) for a missing or
    unreadable file or a model with no class list, or one of another length."""
    from training import evaluate  # pylint: disable=import-outside-toplevel
    if not paths.isfile(model_path):
        raise RunError(f"--model={model_path}: no such model file")
    try:
        model = evaluate.load_model(model_path)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise RunError(f"--model={model_path}: cannot load model: {type(e).__name__}: "
                       f"{first}"[:300]) from None
    record, where = classes_lib.model_classes(model_path)
    if record is None:
        raise RunError(f"--model={model_path}: the model carries no class list and there is "
                       "no classes.json beside it")
    if len(record["wnids"]) != model.output_shape[-1]:
        raise RunError(f"{where}: {len(record['wnids'])} classes for a model with "
                       f"{model.output_shape[-1]} outputs")
    return model, record


def write_saved_model(model, record: dict, image_size: int, out: str) -> None:
    """Writes the SavedModel into ``out``, replacing an earlier one whole.

    Local: written beside ``out``, then moved over it, so a reader never sees half an export.
    URL (``gs://``, ``ram://``): object stores cannot rename a folder, so the old export is
    removed and the new one written in place.
    """
    import keras  # pylint: disable=import-outside-toplevel
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in serving_functions(model, record, image_size).items():
        archive.add_endpoint(name, fn)
    if paths.is_url(out):
        paths.rmtree(out)
        archive.write_out(out, verbose=False)
        return
    parent, base = os.path.split(os.path.abspath(out).rstrip("/"))
    tmp, old = os.path.join(parent, f".tmp-{base}"), os.path.join(parent, f".old-{base}")
    for path in (tmp, old):
        paths.rmtree(path)
    os.makedirs(parent, exist_ok=True)
    try:
        archive.write_out(tmp, verbose=False)
        if os.path.exists(out):
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        for path in (tmp, old):
            paths.rmtree(path)


def export_model(model_path: str, out: str, *, image_size: int | None = None) -> dict:
    """Exports a ``.keras`` model (see the module doc); returns what was written.

    Raises:
      RunError: bad input (missing/unreadable model, no class list, wrong image size).
      RunFailure: the SavedModel could not be written.
    """
    model, record = load_keras_with_classes(model_path)
    size = model_image_size(model, record, image_size)
    try:
        write_saved_model(model, record, size, out)
    except OSError as e:
        raise RunFailure(f"{e.filename or out}: {e.strerror or e}") from None
    return {"out": out, "image_size": size, "num_classes": len(record["wnids"])}


def main(argv):
    """CLI: maps flags to :func:`export_model`; exit 0 done, 2 bad input, 1 failure."""
    import sys  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel
    from plumbing import cli as cli_lib  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"export: error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    if not fv.model or not fv.out:
        print("export: error: --model and --out are required", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    cli_lib.import_tensorflow_quietly()
    try:
        result = export_model(fv.model, fv.out, image_size=fv.image_size)
    except RunError as e:
        print(f"export: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    except RunFailure as e:
        print(f"export: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return cli_lib.EXIT_FAILURE
    except KeyboardInterrupt:
        print("export: error: interrupted", file=sys.stderr)
        return cli_lib.EXIT_INTERRUPTED
    print(f"exported {fv.model} -> {result['out']} ({result['num_classes']} classes, "
          f"{result['image_size']} px)", file=sys.stderr)
    return cli_lib.EXIT_OK


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("model", None, "a .keras model file (e.g. <run>/best.keras)")
    flags.DEFINE_string("out", None, "folder for the SavedModel (replaced if it exists)")
    flags.DEFINE_integer("image_size", None, "input size for a model that takes any size; "
                         "default: the size it was evaluated at, else 64", lower_bound=8)


if __name__ == "__main__":
    from plumbing import cli as _cli
    _cli.quiet_tensorflow()
    _define_flags()
    _cli.run(main, __name__)
