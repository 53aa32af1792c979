"""Tiny ImageNet as verified, sharded TFRecords, and the graph-mode input pipeline that reads them.

Stages (one module each): ``source`` reads and validates a dataset folder or zip, ``build``
writes shards and ``manifest.json``, ``verify`` re-reads a build, ``features`` holds the feature
keys shared by writer and reader, ``input`` turns a build into ``tf.data`` pipelines, ``bench``
measures them. This package never imports ``models``, ``augment`` or ``training``.
"""
