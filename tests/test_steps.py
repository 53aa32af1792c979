"""Multi-replica steps (issue 9, items 8 and 11), on 2 logical CPUs (``two_cpus``: conftest runs
them in one child pytest, as devices must be configured before TensorFlow initialises):

* loss scaling: an overflow on replica 1 only makes every replica skip the step, halves the
  scale, and still advances ``iterations`` (which drives the LR schedule and augmentation seeds);
* synchronised BatchNorm normalises over both replicas' examples; under MirroredStrategy its
  all-reduce (a merge_call) cannot sit inside the nested XLA function, so that step is traced
  inline without XLA (checked: the XLA variant raises).
"""

import numpy as np
import pytest


def _mirrored():
    from training import strategy as strategy_lib
    strategy = strategy_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.mark.slow
@pytest.mark.two_cpus
def test_overflow_on_one_replica_skips_the_step_everywhere_and_lowers_the_scale():
    import keras
    import tensorflow as tf
    from training import config as config_lib, optimizers
    strategy = _mirrored()
    cfg = config_lib.RunConfig(data="d", out="o", optimizer="sgd", precision="mixed_float16")
    with strategy.scope():
        var = keras.Variable(np.ones([4], np.float32))
        opt = optimizers.make_optimizer(cfg, 0.1)
        opt.build([var])

    @tf.function
    def step(bad_replica):
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            g = tf.ones([4]) * opt.dynamic_scale  # a scaled gradient of 1 on each replica
            g = tf.where(tf.equal(rid, bad_replica), g * np.inf, g)
            opt.apply([g], [var])
        strategy.run(replica_fn)

    def state():
        return dict(w=var.numpy().tolist(), scale=float(opt.dynamic_scale.numpy()),
                    it=int(opt.iterations.numpy()))

    scale0 = float(opt.dynamic_scale.numpy())
    step(tf.constant(1))             # replica 1 overflows
    bad = state()
    step(tf.constant(-1))            # no replica overflows
    good = state()
    assert bad["w"] == [1.0] * 4                      # no inf applied anywhere
    assert bad["scale"] == scale0 / 2                 # the scale dropped
    assert bad["it"] == 1                             # the step still counts
    # The next (finite) step applies the summed unscaled gradient 2 with lr 0.1.
    assert good["w"] == pytest.approx([0.8] * 4)
    assert good["it"] == 2 and good["scale"] == bad["scale"]


def _bn_model(strategy, sync):
    import keras
    from training import batchnorm
    with strategy.scope():
        inputs = keras.Input((4, 4, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.BatchNormalization(momentum=0.0, name="bn")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
        if sync:
            assert batchnorm.set_bn_synchronized(model) == 1
        opt = keras.optimizers.SGD(0.0)
        opt.build(model.trainable_variables)
    return model, opt


@pytest.mark.slow
@pytest.mark.two_cpus
def test_sync_bn_averages_over_replicas_in_an_inline_step():
    import tensorflow as tf
    from training import steps as steps_lib
    strategy = _mirrored()
    out = {}
    for sync in (False, True):
        model, opt = _bn_model(strategy, sync)
        if sync:  # the nested XLA function cannot hold MirroredStrategy's merge_call
            bad = steps_lib.make_train_step(model, opt, strategy, recipe=None,
                                            global_batch_size=4, base_seed=0, xla=True)
            ds0 = tf.data.Dataset.from_tensors((np.zeros([4, 4, 4, 3], np.uint8),
                                                np.zeros([4], np.int32))).repeat()
            with pytest.raises(RuntimeError, match="merge_call"):
                bad.run(iter(strategy.experimental_distribute_dataset(ds0)),
                        tf.constant(1, tf.int32))
        step = steps_lib.make_train_step(model, opt, strategy, recipe=None,
                                         global_batch_size=4, base_seed=0, xla=True,
                                         cross_replica_layers=sync)
        # Replica 0 gets images of 0, replica 1 images of 200: per-replica means differ.
        images = np.concatenate([np.zeros([2, 4, 4, 3]), np.full([2, 4, 4, 3], 200.0)])
        ds = tf.data.Dataset.from_tensors((images.astype(np.uint8), np.zeros([4], np.int32)))
        it = iter(strategy.experimental_distribute_dataset(ds.repeat()))
        totals = step.run(it, tf.constant(1, tf.int32)).numpy()
        out[sync] = dict(mean=model.get_layer("bn").moving_mean.numpy().tolist(),
                         xla=steps_lib.train_step_xla_compiled(step),
                         finite=bool(np.all(np.isfinite(totals))))
    local, synced = out[False], out[True]
    assert local["xla"] and not synced["xla"] and synced["finite"]
    # momentum 0: the moving mean is the last batch mean. Synchronised: over both replicas
    # (200/255/2 per channel); local: replica 0's own (0), as mirrored variables keep replica
    # 0's value.
    assert synced["mean"] == pytest.approx([200 / 255 / 2] * 3, rel=1e-4)
    assert local["mean"] != pytest.approx(synced["mean"], rel=1e-3)


def test_small_replica_batches_warn_and_name_sync_bn(capsys):
    from training import config as config_lib
    from plumbing import progress as console
    from training import batchnorm
    cfg = config_lib.RunConfig(data="d", out="o", phases=(
        config_lib.Phase(epochs=1, image_size=64, batch_size=64, augment="none",
                         plateau=False),
        config_lib.Phase(epochs=1, image_size=64, batch_size=256, augment="none",
                         plateau=False)))
    batchnorm.warn_small_replica_batches(cfg.phases, 8, cfg.sync_bn, console.log)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "phase 1" in lines[0] and "8 examples" in lines[0]
    assert "--sync_bn" in lines[0]
    batchnorm.warn_small_replica_batches(cfg.phases, 8, True, console.log)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.two_cpus
def test_asking_whether_a_replicated_step_was_xla_compiled_does_not_trace_it_again():
    """The run's summary asks at its end; a retrace of the whole step (augmentation and model)
    outside the replica context cost 16 s there with the tiny Network 2."""
    import tensorflow as tf
    from training import steps as steps_lib
    strategy = _mirrored()
    model, opt = _bn_model(strategy, sync=False)
    step = steps_lib.make_train_step(model, opt, strategy, recipe=None, global_batch_size=4,
                                     base_seed=0, xla=True)
    assert not steps_lib.train_step_xla_compiled(step)  # not traced yet
    ds = tf.data.Dataset.from_tensors((np.zeros([4, 4, 4, 3], np.uint8), np.zeros([4], np.int32)))
    step.run(iter(strategy.experimental_distribute_dataset(ds.repeat())), tf.constant(1, tf.int32))
    traces = step.compute.experimental_get_tracing_count()
    assert steps_lib.train_step_xla_compiled(step)
    assert step.compute.experimental_get_tracing_count() == traces
