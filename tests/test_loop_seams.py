"""The fit loop's set-up stages through their public seams (issue 16): the loop applies
``--sync_bn``, and an ``init=best`` phase gets the optimizer's slots back with the weights.
Small models, no training: fast tier."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _cfg(tmp_path, **kw):
    from training import config as config_lib
    phases = (config_lib.Phase(epochs=1, image_size=16, batch_size=8, augment="none",
                               plateau=False),
              config_lib.Phase(epochs=1, image_size=16, batch_size=8, augment="none",
                               plateau=False, init="best"))
    return config_lib.RunConfig(data="d", out=str(tmp_path), model="net2", width=0.0625,
                                phases=phases, val_image_size=16, **kw)


def test_the_loop_applies_sync_bn_and_bn_momentum(tmp_path):
    from training import batchnorm, loop
    model = loop.build_model(_cfg(tmp_path, sync_bn=True, bn_momentum=0.9), num_classes=4)
    layers = batchnorm.batch_norm_layers(model)
    assert layers and all(l.synchronized and l.momentum == 0.9 for l in layers)
    plain = loop.build_model(_cfg(tmp_path), num_classes=4)
    assert not any(l.synchronized for l in batchnorm.batch_norm_layers(plain))


def test_init_best_puts_the_optimizer_slots_back_with_the_weights(tmp_path):
    import keras
    import tensorflow as tf

    from training import loop
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = keras.optimizers.Adam(1e-2)
    opt.build(model.trainable_variables)
    parts = loop.checkpoint_parts(_cfg(tmp_path), model, opt, tf.Module(), chief=True)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(tf.ones([4, 3])) ** 2)
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    step()
    parts["phase_best"].take(0.5, 1)
    saved = [v.numpy().copy() for v in list(model.weights) + list(opt.variables)]
    step()
    step()
    parts["phase_best"].put()
    now = [v.numpy() for v in list(model.weights) + list(opt.variables)]
    iteration = [i for i, v in enumerate(opt.variables) if v is opt.iterations][0]
    for i, (a, b) in enumerate(zip(saved, now, strict=True)):
        if i == len(model.weights) + iteration:  # the step counter drives the schedule
            assert int(b) == 3
        else:
            np.testing.assert_array_equal(a, b)
