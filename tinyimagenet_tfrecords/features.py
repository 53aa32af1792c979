"""Feature keys of one Tiny ImageNet example, defined once for the writer and the reader.

The converter serializes with :func:`encode_example` (TF-free; :func:`serialize_example` is the
``tf.train.Example`` equivalent); the input pipeline and ``verify`` parse with
:data:`PARSE_SPEC` and decode with :func:`decode_image`. Keeping both next to the keys means
a renamed key cannot silently produce empty features on the reading side. Bump ``SCHEMA_VERSION`` on any change here: the
reader refuses builds written with another schema.

TensorFlow is imported lazily (on first use of :data:`PARSE_SPEC`, :func:`serialize_example`
or :func:`decode_image`): the converter's worker processes import this module for the keys
and :func:`encode_example` only, and importing TensorFlow in each of them would cost seconds
and hundreds of MB.

Decoding: ``tf.io.decode_image``/``decode_jpeg`` default to libjpeg's fast integer IDCT,
which differs from PIL (and from what the source pixels mean) by a few levels on nearly
every Tiny ImageNet image. :func:`decode_image` uses the accurate IDCT, which matches PIL's
``Image.open(f).convert("RGB")`` pixel for pixel.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# Image bytes: the original file bytes (storage "jpeg"; JPEG or PNG data, never re-encoded,
# except the rare files TF would decode differently from PIL: see IMAGE_FORMATS) or decoded
# uint8 RGB in HWC order (storage "raw").
IMAGE = "image/encoded"
# b"jpeg", b"png" or b"raw": what IMAGE holds, so a reader can decode without sniffing.
IMAGE_FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
# int64 label in [0, num_classes), from the sorted wnids; -1 for the unlabelled test split.
LABEL = "image/class/label"
WNID = "image/class/wnid"  # bytes; b"" for test
FILENAME = "image/filename"  # source file name, e.g. b"n01443537_0.JPEG"
# int64 [4]: x_min, y_min, x_max, y_max in pixels as in the dataset's annotation files;
# [-1, -1, -1, -1] where the split has no boxes (test).
BBOX = "image/object/bbox"

NO_LABEL = -1
NO_BBOX = (-1, -1, -1, -1)

STORAGE_FORMATS = ("jpeg", "raw")
# Values of IMAGE_FORMAT. Storage "jpeg" keeps the original bytes of JPEG (and PNG) files;
# images whose TF decoding would differ from PIL's RGB (CMYK/YCCK JPEGs, other formats) are
# stored as lossless PNG of PIL's RGB conversion instead.
IMAGE_FORMATS = ("jpeg", "png", "raw")


def _parse_spec():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        WNID: tf.io.FixedLenFeature([], tf.string),
        FILENAME: tf.io.FixedLenFeature([], tf.string),
        BBOX: tf.io.FixedLenFeature([4], tf.int64),
    }


_LAZY = {}


def __getattr__(name):
    # PEP 562: `features.PARSE_SPEC` / `from features import PARSE_SPEC` import TF on first use.
    if name == "PARSE_SPEC":
        if name not in _LAZY:
            _LAZY[name] = _parse_spec()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bytes(value: bytes):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def serialize_example(
    *,
    image: bytes,
    image_format: str,
    height: int,
    width: int,
    label: int,
    wnid: str,
    filename: str,
    bbox=NO_BBOX,
) -> bytes:
    """Returns one serialized ``tf.train.Example`` holding every feature of :data:`PARSE_SPEC`.

    Uses ``tf.train.Example``; the converter uses the equivalent, TF-free
    :func:`encode_example` (tests check both parse to the same values).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    feature = {
        IMAGE: _bytes(image),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        HEIGHT: _ints([height]),
        WIDTH: _ints([width]),
        LABEL: _ints([label]),
        WNID: _bytes(wnid.encode()),
        FILENAME: _bytes(filename.encode()),
        BBOX: _ints(bbox),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# --- TF-free protobuf encoding -------------------------------------------------------------
# tf.train.Example { Features features = 1; }  Features { map<string, Feature> feature = 1; }
# Feature { BytesList bytes_list = 1; ...; Int64List int64_list = 3; }
# BytesList { repeated bytes value = 1; }  Int64List { repeated int64 value = 1 [packed]; }


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    value &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _size(n: int) -> int:
    """Bytes of a length-delimited field (tag, varint length, payload) of payload size n."""
    return 1 + len(_varint(n)) + n


_KEY_FIELDS = {k: b"\x0a" + _varint(len(k)) + k.encode()
               for k in (IMAGE, IMAGE_FORMAT, HEIGHT, WIDTH, LABEL, WNID, FILENAME, BBOX)}


def _entry_parts(key: str, list_tag: bytes, payload: bytes) -> list[bytes]:
    """Map entry {key, Feature{<list_tag>: List{value: payload}}}, as parts to join once.

    Sizes are computed arithmetically so the (up to 12 KB) payload is copied only once.
    """
    key_field = _KEY_FIELDS[key]
    n = len(payload)
    list_size = _size(n)          # BytesList / Int64List message
    feature_size = _size(list_size)  # Feature message
    body = len(key_field) + _size(feature_size)
    return [b"\x0a", _varint(body), key_field, b"\x12", _varint(feature_size), list_tag,
            _varint(list_size), b"\x0a", _varint(n), payload]


def _bytes_parts(key: str, value: bytes) -> list[bytes]:
    return _entry_parts(key, b"\x0a", value)  # Feature.bytes_list = 1


def _ints_parts(key: str, values) -> list[bytes]:
    return _entry_parts(key, b"\x1a", b"".join(_varint(v) for v in values))  # int64_list = 3


def encode_example(
    *,
    image: bytes,
    image_format: str,
    height: int,
    width: int,
    label: int,
    wnid: str,
    filename: str,
    bbox=NO_BBOX,
) -> bytes:
    """Serializes the same ``tf.train.Example`` as :func:`serialize_example`, without TF.

    Hand-written protobuf wire format (cheap: sizes computed, the image copied once), so the
    converter's worker processes never import TensorFlow. ``tf.io.parse_single_example`` with
    :data:`PARSE_SPEC` reads it back exactly like the ``tf.train.Example`` encoding (only
    the order of the map entries may differ).
    """
    parts = (_bytes_parts(IMAGE, image) + _bytes_parts(IMAGE_FORMAT, image_format.encode())
             + _ints_parts(HEIGHT, (height,)) + _ints_parts(WIDTH, (width,))
             + _ints_parts(LABEL, (label,)) + _bytes_parts(WNID, wnid.encode())
             + _bytes_parts(FILENAME, filename.encode()) + _ints_parts(BBOX, bbox))
    body_size = sum(map(len, parts))
    return b"".join([b"\x0a", _varint(body_size)] + parts)  # Example.features = 1


def decode_image(encoded, storage: str, height=None, width=None):
    """Decodes one stored image to uint8 ``[H, W, 3]`` RGB: the one decoder of every reader.

    The input pipeline (``pipeline.decode_batch``) and ``verify`` both call this function, so
    a verified build is a build the pipeline reads identically. Graph-friendly (usable inside
    ``tf.data`` maps and ``tf.function``).

    ``storage="jpeg"``: the original file bytes, JPEG or PNG (IMAGE_FORMAT says which).
    ``tf.io.decode_jpeg`` decodes both in one kernel (it reads the format from the bytes'
    header), so no per-image ``tf.case`` on IMAGE_FORMAT is needed (that control flow inside
    a batch is much slower). Always 3 channels: grayscale is replicated.
    ``dct_method="INTEGER_ACCURATE"`` makes JPEG pixels equal PIL's ``.convert("RGB")`` (and
    so Keras' ``load_img`` of the original recipe); TF's default fast IDCT differs by a few
    levels on nearly every image.
    ``storage="raw"``: HWC RGB bytes, reshaped with ``height`` and ``width``.

    Args:
      encoded: scalar string tensor, the IMAGE feature.
      storage: the build's storage, "jpeg" or "raw" (a Python string: one graph per build).
      height: scalar int tensor, the HEIGHT feature (raw only).
      width: scalar int tensor, the WIDTH feature (raw only).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if storage == "raw":
        shape = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), 3])
        return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), shape)
    if storage != "jpeg":
        raise ValueError(f"storage must be one of {STORAGE_FORMATS}, got {storage!r}")
    return tf.ensure_shape(
        tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"), [None, None, 3])
