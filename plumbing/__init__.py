"""The bottom floor every stage may import: paths, atomic writes, the CLI runner, progress.

``paths`` (local or ``tf.io.gfile`` URL, one definition of a URL, atomic writes), ``cli``
(the exit-status convention, the absl runner, a quiet TensorFlow import) and ``progress``
(the one progress line). Nothing here knows about images, and nothing here imports another
package of this project or TensorFlow at import time (TensorFlow only when a URL is opened),
so the converter's worker processes can use it and stay TensorFlow-free.
"""
