"""Tiny ImageNet as verified, sharded TFRecords, and the graph-mode input pipeline that reads them.

Stages (one module each): ``source`` reads and validates a dataset folder or zip, ``build``
writes shards and ``manifest.json`` (``download`` fetches the zip, ``synthetic`` makes
full-size stand-ins), ``verify`` re-reads a build, ``features`` holds the feature keys shared
by writer and reader, ``manifest`` loads a finished build, ``pipeline`` turns a build into
``tf.data`` pipelines, ``bench`` and ``build_bench`` measure them. This package never imports ``models``, ``augment`` or ``training``.
"""
