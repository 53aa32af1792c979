"""The optimizers apply the authors' update rules; the flagfiles ask for them (issue 9)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from training import config as config_lib  # noqa: E402
from training import optimizers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flagfile_lines(name):
    with open(os.path.join(ROOT, "flags", name)) as f:
        return [line.strip() for line in f if line.startswith("--")]


def keras_224_rmsprop(p, grads, lr, rho=0.9, eps=1e-8):
    """Keras 2.2.4's RMSprop by hand: a = 0; a = rho*a + (1-rho)*g^2; p -= lr*g/(sqrt(a)+eps)."""
    a = np.zeros_like(p)
    for g in grads:
        a = rho * a + (1.0 - rho) * g * g
        p = p - lr * g / (np.sqrt(a) + eps)
    return p


def test_rmsprop_epsilon_outside_root_matches_keras_224_by_hand():
    rng = np.random.default_rng(0)
    p0 = np.zeros(64)  # updates measured from 0: no float32 rounding of a large weight
    # Gradients spanning 1e-9..1: the small ones are where eps inside/outside the root differ.
    grads = [(rng.normal(size=(64,)) * 10.0 ** rng.uniform(-9, 0, size=(64,)))
             for _ in range(3)]
    var = keras.Variable(p0.astype(np.float32))
    opt = optimizers.RMSpropEpsOutside(1e-4, epsilon=1e-8)
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(g.astype(np.float32))], [var])
    want = keras_224_rmsprop(p0, grads, 1e-4)
    np.testing.assert_allclose(var.numpy() - p0, want - p0, rtol=1e-4, atol=1e-12)
    # Keras 3's own RMSprop (eps inside the root) is measurably different on these gradients.
    var3 = keras.Variable(p0.astype(np.float32))
    opt3 = keras.optimizers.RMSprop(1e-4, epsilon=1e-8)
    for g in grads:
        opt3.apply([keras.ops.convert_to_tensor(g.astype(np.float32))], [var3])
    assert np.max(np.abs((var3.numpy() - p0) - (want - p0))) > 1e-6


def test_make_optimizer_picks_rmsprop_by_setting():
    cfg = config_lib.RunConfig(data="d", out="o", optimizer="rmsprop", epsilon=1e-8)
    assert type(optimizers.make_optimizer(cfg, 1e-4)) is keras.optimizers.RMSprop
    cfg = dataclasses.replace(cfg, rmsprop_epsilon_outside_root=True)
    opt = optimizers.make_optimizer(cfg, 1e-4)
    assert isinstance(opt, optimizers.RMSpropEpsOutside) and opt.rho == 0.9
    mixed = optimizers.make_optimizer(dataclasses.replace(cfg, precision="mixed_float16"), 1e-4)
    assert isinstance(mixed, optimizers.ReplicaAgreedLossScale)
    assert isinstance(mixed.inner_optimizer, optimizers.RMSpropEpsOutside)


def test_net2_flagfile_uses_keras_224_rmsprop_and_best_weights_between_phases():
    lines = flagfile_lines("net2.flags")
    assert "--optimizer=rmsprop" in lines and "--epsilon=1e-8" in lines
    assert "--rmsprop_epsilon_outside_root" in lines
    phases = [config_lib.parse_phase(line.split("=", 1)[1], image_size=64, batch_size=128,
                                     augment="none", plateau=False)
              for line in lines if line.startswith("--phase=")]
    assert [p.init for p in phases] == ["last"] + ["best"] * 5


def test_phase_init_key_parses_and_rejects_bad_values():
    kw = dict(image_size=64, batch_size=128, augment="none", plateau=False)
    assert config_lib.parse_phase("epochs=2", **kw).init == "last"
    assert config_lib.parse_phase("epochs=2,init=best", **kw).init == "best"
    bad = config_lib.RunConfig(data="d", out="o", phases=(
        config_lib.parse_phase("epochs=2,init=worst", **kw),))
    with pytest.raises(config_lib.ConfigError, match="init"):
        config_lib.validate(bad)
    first_best = config_lib.RunConfig(data="d", out="o", phases=(
        config_lib.parse_phase("epochs=2,init=best", **kw),))
    with pytest.raises(config_lib.ConfigError, match="previous phase"):
        config_lib.validate(first_best)
