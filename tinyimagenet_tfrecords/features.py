"""Feature keys of one Tiny ImageNet example, defined once for the writer and the reader.

The converter serializes with :func:`serialize_example`; the input pipeline parses with
:data:`PARSE_SPEC`. Keeping both next to the keys means a renamed key cannot silently
produce empty features on the reading side. Bump ``SCHEMA_VERSION`` on any change here: the
reader refuses builds written with another schema.
"""

from __future__ import annotations

import tensorflow as tf

SCHEMA_VERSION = 1

# Image bytes: the original file bytes (storage "jpeg"; JPEG or PNG data, never re-encoded)
# or decoded uint8 RGB in HWC order (storage "raw").
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

PARSE_SPEC = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    WNID: tf.io.FixedLenFeature([], tf.string),
    FILENAME: tf.io.FixedLenFeature([], tf.string),
    BBOX: tf.io.FixedLenFeature([4], tf.int64),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values) -> tf.train.Feature:
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

    Pure Python (no TF ops), so worker processes can call it cheaply.
    """
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
