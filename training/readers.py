"""The evaluation readers of one opened build, each built once and iterated every epoch.

``pipeline.eval_dataset`` gives a dataset that restarts, with the same batches, each time it
is iterated; building it again every epoch only re-traces its map functions. A run (or one
``training.evaluate`` call) keeps an :class:`EvalReaders` for its build and asks it for the
reader of a (split, size, batch, part); validation, the final report, the misclassified grid
and predictions all share them.
"""

from __future__ import annotations

from tinyimagenet_tfrecords import manifest as manifest_lib


class EvalReaders:
    """``pipeline.eval_dataset`` readers of ``build``, one per distinct set of arguments.

    ``built`` counts the readers made (a test checks that epochs reuse them).
    """

    def __init__(self, build: manifest_lib.Build):
        if not isinstance(build, manifest_lib.Build):
            raise TypeError(f"expected a build from manifest.open_build, got {build!r}")
        self.build = build
        self.built = 0
        self._readers = {}

    def get(self, split: str, *, image_size: int, batch_size: int, num_parts: int = 1,
            part_id: int = 0, with_filenames: bool = False, interleave: bool = True):
        """The reader of ``split`` (see ``pipeline.eval_dataset``), built on first use."""
        key = (split, int(image_size), int(batch_size), int(num_parts), int(part_id),
               bool(with_filenames), bool(interleave))
        reader = self._readers.get(key)
        if reader is None:
            from tinyimagenet_tfrecords import pipeline  # pylint: disable=import-outside-toplevel
            reader = self._readers[key] = pipeline.eval_dataset(
                self.build, split, batch_size=batch_size, image_size=image_size,
                num_input_pipelines=num_parts, input_pipeline_id=part_id,
                with_filenames=with_filenames, interleave=interleave)
            self.built += 1
        return reader


def readers_of(build: manifest_lib.Build, readers: EvalReaders | None) -> EvalReaders:
    """``readers`` when given (they must read ``build``), else fresh ones for ``build``."""
    if readers is None:
        return EvalReaders(build)
    if readers.build != build:
        raise ValueError(f"readers of {readers.build.path} given for {build.path}")
    return readers
