"""Optimizers: the run's choice, Keras 2.2.4's RMSprop, and loss scaling agreed by all replicas.

Two Keras 3 behaviours differ from what the original runs (Keras 2.2.4) or a multi-replica run
need, and each gets a small subclass here:

* :class:`RMSpropEpsOutside`: Keras 2.2.4 updated ``p -= lr * g / (sqrt(v) + eps)``; Keras 3
  computes ``lr * g / sqrt(v + eps)``, which with ``eps=1e-8`` floors the denominator at 1e-4
  instead of 1e-8 and shrinks small-gradient updates (issue 9, item 2).
* :class:`ReplicaAgreedLossScale`: Keras 3's ``LossScaleOptimizer`` judges each replica's
  *un-reduced* gradients and keeps replica 0's verdict, so an overflow on another replica is
  summed into every weight and the scale is not lowered. Here every replica's verdict is
  all-reduced first: one overflowing replica makes all of them skip the step and halve the
  scale. A skipped step still advances ``iterations``, the counter that drives the learning
  rate schedule and the augmentation seeds, so both stay a function of the number of batches
  consumed (as Keras 2's loss-scale optimizer did) and a resumed run replays the same history.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="training")
class RMSpropEpsOutside(keras.optimizers.RMSprop):
    """RMSprop with epsilon added outside the square root, as in Keras 2.2.4.

    ``v <- rho * v + (1 - rho) * g**2`` (``v`` starts at zero) and
    ``p <- p - lr * g / (sqrt(v) + epsilon)``. Plain (uncentred, no momentum) only: that is
    the optimizer Keras 2.2.4 had.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.centered or self.momentum:
            raise ValueError("RMSpropEpsOutside is Keras 2.2.4's plain RMSprop: "
                             "no centered, no momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        velocity = self._velocities[self._get_variable_index(variable)]
        self.assign(velocity, ops.add(ops.multiply(self.rho, velocity),
                                      ops.multiply(1 - self.rho, ops.square(gradient))))
        denominator = ops.add(ops.sqrt(velocity), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), denominator))


class ReplicaAgreedLossScale(keras.optimizers.LossScaleOptimizer):
    """A dynamic loss-scale optimizer whose skip decision is the same on every replica.

    See the module docstring. Outside a multi-replica context it is Keras' optimizer, except
    that a skipped step advances ``iterations``.
    """

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        # The step happened (a batch was consumed); only the update was dropped.
        self.inner_optimizer.iterations.assign_add(1)

    def _tf_apply(self, grads, trainable_variables=None):
        ctx = tf.distribute.get_replica_context()
        if (ctx is None or ctx.num_replicas_in_sync == 1
                or tf.__internal__.distribute.strategy_supports_no_merge_call()):
            return super()._tf_apply(grads, trainable_variables)
        # Any replica's overflow counts: all-reduce the local verdicts in replica context.
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                             tf.cast(tf.logical_not(self.check_finite(grads)), tf.float32))
        finite = tf.equal(bad, 0.0)

        def cross_replica(distribution, finite, grads, trainable_variables):
            agreed = distribution.experimental_local_results(finite)[0]

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    self._stateful_handle_finite_grads, args=(grads, trainable_variables))

            # The cond runs in cross-replica context: the apply branch calls merge_call.
            ops.cond(agreed, apply_fn, self._stateful_handle_non_finite_grads)

        ctx.merge_call(cross_replica, args=(finite, grads, trainable_variables))


def make_optimizer(cfg, learning_rate) -> keras.optimizers.Optimizer:
    """The run's optimizer: Adam / RMSprop / SGD, loss-scaled for mixed float16.

    Args:
      cfg: a :class:`training.config.RunConfig` (``optimizer``, ``epsilon``,
        ``rmsprop_epsilon_outside_root``, ``precision``).
      learning_rate: a float or a ``LearningRateSchedule``.
    """
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate, epsilon=cfg.epsilon)
    elif cfg.optimizer == "rmsprop":
        cls = RMSpropEpsOutside if cfg.rmsprop_epsilon_outside_root else keras.optimizers.RMSprop
        opt = cls(learning_rate, epsilon=cfg.epsilon)
    else:
        opt = keras.optimizers.SGD(learning_rate, momentum=0.9)
    if cfg.precision == "mixed_float16":
        opt = ReplicaAgreedLossScale(opt)
    return opt
