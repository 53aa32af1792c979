"""``AugmentLayer``: a recipe as a Keras 3 layer that runs per replica inside the train step.

Why a layer: the augmentation then runs on the accelerator, inside the (XLA-compiled) train
step, after the host pipeline has shipped compact uint8 batches. The seed of each call is
``augment.core.step_seed(seed, step, replica_id)``, so two replicas never draw the same
parameters, each step draws new ones, and a run is reproducible from its base seed.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from augment.core import step_seed
from augment.recipes import get_recipe


def replica_id() -> tf.Tensor:
    """This replica's index in its sync group (0 outside any strategy), as int32."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: treat as the first replica
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


@keras.saving.register_keras_serializable(package="augment")
class AugmentLayer(keras.layers.Layer):
    """Applies an augmentation recipe when ``training=True``; identity otherwise.

    Args:
      recipe: a registered recipe name (``augment.recipe_names()``) or an Augmenter / any
        callable ``(images, seed) -> images``. Only a name can be serialised: register a
        custom recipe with ``augment.register_recipe`` to save models that use it.
      seed: the base seed (int).
      jit_compile: run the recipe as its own ``tf.function(jit_compile=True)``. It has no
        variables, so it compiles even where the surrounding step cannot (Keras on
        ``MirroredStrategy`` over CPUs); inside an XLA step it is simply inlined.

    Call with ``training`` and optionally ``step``: an explicit step (e.g. the optimizer's
    iteration count) makes the seed a pure function of the step; without one the layer
    counts its own training calls in a non-trainable variable (``ONLY_FIRST_REPLICA``
    aggregation, so replicas stay in step under ``MirroredStrategy``).
    """

    def __init__(self, recipe="student_net2", seed=0, jit_compile=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(recipe, str):
            self._recipe_name = recipe
            self.recipe = get_recipe(recipe)
        elif callable(recipe):
            self._recipe_name = None
            self.recipe = recipe
        else:
            raise TypeError(f"recipe must be a name or a callable, got {recipe!r}")
        self.seed = int(seed)
        self.jit_compile = bool(jit_compile)
        self._augment = (tf.function(self.recipe, jit_compile=True, autograph=False)
                         if self.jit_compile else self.recipe)
        self.step_counter = self.add_weight(
            name="augment_step", shape=(), dtype="int64", initializer="zeros",
            trainable=False, aggregation="only_first_replica")

    def call(self, images, training=None, step=None):
        if training is None or training is False:
            return images
        if isinstance(training, bool):
            return self._augmented(images, step)
        return tf.cond(tf.cast(training, tf.bool), lambda: self._augmented(images, step),
                       lambda: tf.identity(images))

    def _augmented(self, images, step):
        if step is None:
            step = self._next_step()
        seed = step_seed(self.seed, step, replica_id())
        return self._augment(images, seed)

    def _next_step(self) -> tf.Tensor:
        variable = self.step_counter
        current = tf.identity(variable.value)
        with tf.control_dependencies([current]):
            variable.assign_add(tf.constant(1, tf.int64))
        return current

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, images, training=None, step=None):
        return keras.KerasTensor(images.shape, dtype=images.dtype)

    def get_config(self):
        if self._recipe_name is None:
            raise TypeError("AugmentLayer with an unnamed recipe cannot be serialised; "
                            "register it with augment.register_recipe and pass its name")
        config = super().get_config()
        config.update(recipe=self._recipe_name, seed=self.seed, jit_compile=self.jit_compile)
        return config


__all__ = ["AugmentLayer", "replica_id"]
