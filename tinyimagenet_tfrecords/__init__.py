"""Tiny ImageNet as verified, sharded TFRecords, and the graph-mode input pipeline that reads them.

Stages (one module each): ``source`` reads and validates a dataset folder or zip, ``build``
writes shards and ``manifest.json`` (``download`` fetches the zip, ``synthetic`` makes
full-size stand-ins, ``sample`` extracts a small real sample), ``verify`` re-reads a build,
``features`` holds the feature keys and the one image decoder shared by writer and readers,
``manifest`` loads and checks a finished build (local or ``tf.io.gfile`` URL), ``pipeline``
turns a build into ``tf.data`` pipelines, ``cli`` holds the tools' exit convention. The
benchmarks live in ``benchmarks/``. This package never imports ``models``, ``augment`` or
``training``.
"""
