"""RunConfig: one declaration per setting, validation per model, the curriculum cut by --epochs."""

import dataclasses
import typing

import pytest

from training import config as config_lib


def _cfg(**kw):
    phases = kw.pop("phases", (config_lib.Phase(epochs=1, image_size=64, batch_size=8,
                                                augment="none", plateau=False),))
    return config_lib.RunConfig(data="/d", out="/o", phases=phases, **kw)


def test_every_setting_is_declared_once_with_help_and_a_flag_type():
    hints = typing.get_type_hints(config_lib.RunConfig)
    fields = config_lib.flag_fields()
    assert {f.name for f in dataclasses.fields(config_lib.RunConfig)} - {
        f.name for f in fields} == {"phases"}
    for f in fields:
        assert f.metadata["help"], f.name
        assert hints[f.name] in (int, float, bool, str), f.name
        if f.metadata["choices"]:
            assert f.default in f.metadata["choices"], f.name


def test_dead_and_test_hook_settings_are_gone():
    names = {f.name for f in dataclasses.fields(config_lib.RunConfig)}
    assert not names & {"make_synthetic_data", "stop_after_epoch"}
    assert not hasattr(config_lib, "RUNTIME_ONLY")


def test_runtime_only_settings_are_left_out_of_the_fingerprint():
    keys = config_lib.runtime_only_keys()
    assert set(keys) == {"steps_per_call", "eval_batch_size", "checkpoint_every",
                         "keep_checkpoints", "progress", "cluster_timeout", "export"}
    fp = _cfg(progress=False, keep_checkpoints=9).fingerprint()
    assert not set(keys) & set(fp)
    assert fp == _cfg().fingerprint()
    assert _cfg(seed=1).fingerprint() != fp


@pytest.mark.parametrize("model", ["net1", "net1_student", "net2"])
def test_image_sizes_the_model_cannot_take_are_refused_per_phase_and_for_val(model):
    bad_phase = config_lib.Phase(epochs=1, image_size=60, batch_size=8, augment="none",
                                 plateau=False)
    with pytest.raises(config_lib.ConfigError, match=r"phase 1: image size 60.*multiple of 8"):
        config_lib.validate(_cfg(model=model, phases=(bad_phase,)))
    with pytest.raises(config_lib.ConfigError, match=r"--val_image_size=60"):
        config_lib.validate(_cfg(model=model, val_image_size=60))
    config_lib.validate(_cfg(model=model, val_image_size=56))


def test_size_table_matches_what_the_models_enforce():
    import models
    assert set(config_lib.SIZE_MULTIPLE) == set(models.NAMES)
    for name, multiple in config_lib.SIZE_MULTIPLE.items():
        # The models check the size before building any layer, so this is cheap.
        with pytest.raises(ValueError, match=f"multiple of {multiple}"):
            models.build(name, num_classes=2, image_size=multiple * 3 + multiple // 2)


def test_first_epochs_cuts_the_curriculum():
    p = [config_lib.Phase(epochs=n, image_size=s, batch_size=8, augment="none", plateau=False)
         for n, s in ((3, 32), (2, 64), (4, 16))]
    cut = config_lib.first_epochs(tuple(p), 4)
    assert [(q.epochs, q.image_size) for q in cut] == [(3, 32), (1, 64)]
    assert config_lib.first_epochs(tuple(p), 9) == tuple(p)
    for bad in (0, 10):
        with pytest.raises(config_lib.ConfigError, match=f"--epochs={bad}"):
            config_lib.first_epochs(tuple(p), bad)


def test_data_and_out_are_required():
    with pytest.raises(config_lib.ConfigError, match="--data"):
        config_lib.validate(dataclasses.replace(_cfg(), data=None))
    with pytest.raises(config_lib.ConfigError, match="--out"):
        config_lib.validate(dataclasses.replace(_cfg(), out=""))
