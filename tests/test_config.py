"""RunConfig: one declaration per setting (a new per-phase setting is one field), validation
per model and per phase, the curriculum cut by --epochs."""

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
        if f.metadata["check"] and f.default is not None:
            assert f.metadata["check"].ok(f.default), f.name  # the default passes its check
    for cls in (config_lib.Phase, config_lib.EvalSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f.name
            if f.metadata["check"] and f.default is not None:
                assert f.metadata["check"].ok(f.default), f.name


def test_run_and_evaluate_share_the_evaluation_declarations():
    run = {f.name: f for f in dataclasses.fields(config_lib.RunConfig)}
    ev = {f.name: f for f in dataclasses.fields(config_lib.EvalSettings)}
    for run_name, name in (("eval_batch_size", "batch_size"), ("val_image_size", "image_size"),
                           ("misclassified", "misclassified"),
                           ("worst_classes", "worst_classes")):
        assert run[run_name].metadata["check"] is ev[name].metadata["check"], run_name
    assert run["batch_size"].default == next(
        f.default for f in dataclasses.fields(config_lib.Phase) if f.name == "batch_size")


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


@pytest.mark.parametrize("change, match", [
    (dict(data=None), "--data is required"),
    (dict(out=""), "--out is required"),
    (dict(phases=()), "no epochs to train"),
    (dict(model="net9"), r"--model=net9: one of"),
    (dict(optimizer="adamw"), r"--optimizer=adamw: must be one of adam, rmsprop, sgd"),
    (dict(lr_schedule="cosine"), r"--lr_schedule=cosine: must be one of"),
    (dict(precision="float8"), r"--precision=float8: must be one of"),
    (dict(strategy="tpu"), r"--strategy=tpu: must be one of"),
    (dict(width=0.0), r"--width=0.0: must be > 0"),
    (dict(bn_momentum=1.0), r"--bn_momentum=1.0: must be in \[0, 1\)"),
    (dict(learning_rate=0.0), r"--learning_rate=0.0: must be > 0"),
    (dict(epsilon=-1.0), r"--epsilon=-1.0: must be > 0"),
    (dict(steps_per_epoch=-1), r"--steps_per_epoch=-1: must be >= 0"),
    (dict(steps_per_call=0), r"--steps_per_call=0: must be >= 1"),
    (dict(eval_batch_size=0), r"--eval_batch_size=0: must be >= 1"),
    (dict(val_image_size=4), r"--val_image_size=4: must be a multiple of 8 in 8..512"),
    (dict(plateau_factor=1.0), r"--plateau_factor=1.0: must be in \(0, 1\)"),
    (dict(plateau_patience=-1), r"--plateau_patience=-1: must be >= 0"),
    (dict(cluster_timeout=0.0), r"--cluster_timeout=0.0: must be > 0"),
    (dict(checkpoint_every=0), r"--checkpoint_every=0: must be >= 1"),
    (dict(keep_checkpoints=0), r"--keep_checkpoints=0: must be >= 1"),
    (dict(seed=2 ** 31), r"--seed=2147483648: must be in 0..2147483647"),
    (dict(misclassified=-1), r"--misclassified=-1: must be >= 0"),
    (dict(worst_classes=0), r"--worst_classes=0: must be >= 1"),
    (dict(rmsprop_epsilon_outside_root=True), r"--rmsprop_epsilon_outside_root needs"),
])
def test_a_bad_run_wide_setting_is_refused_naming_its_flag(change, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(dataclasses.replace(_cfg(), **change),
                            model_names=tuple(config_lib.SIZE_MULTIPLE))


def _phase(**kw):
    return config_lib.Phase(**{**dict(epochs=1, image_size=64, batch_size=8, augment="none",
                                      plateau=False), **kw})


@pytest.mark.parametrize("phases, schedule, match", [
    ((_phase(epochs=0),), "constant", r"phase 1: epochs=0 must be >= 1"),
    ((_phase(image_size=4),), "constant", r"phase 1: size=4 must be in 8..512 \(the phase's "
     r"size= or --image_size\)"),
    ((_phase(image_size=520),), "constant", r"phase 1: size=520 must be in 8..512"),
    ((_phase(batch_size=0),), "constant", r"phase 1: batch=0 must be >= 1"),
    ((_phase(init="worst"),), "constant", r"phase 1: init=worst must be one of last, best"),
    ((_phase(init="best"),), "constant", r"phase 1: init=best needs a previous phase"),
    ((_phase(), _phase(augment="nope")), "constant", r"phase 2: augmentation 'nope'"),
    ((_phase(),), "triangular2", r"phase 1: --lr_schedule=triangular2 needs min_lr"),
    ((_phase(min_lr=2.0, max_lr=1.0, step_epochs=1.0),), "triangular2",
     r"phase 1: need 0 < min_lr <= max_lr"),
    ((_phase(min_lr=1.0, max_lr=1.0, step_epochs=0.0),), "triangular2",
     r"phase 1: step_epochs must be > 0"),
    ((_phase(min_lr=1.0, max_lr=1.0, step_epochs=1.0, plateau=True),), "triangular2",
     r"phase 1: plateau=on needs --lr_schedule=constant"),
])
def test_a_bad_phase_is_refused_naming_the_phase_and_key(phases, schedule, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(_cfg(phases=phases, lr_schedule=schedule),
                            recipe_names=config_lib.BUILTIN_RECIPES)


def test_builtin_recipe_table_matches_augment():
    import augment
    assert config_lib.BUILTIN_RECIPES == augment.RECIPE_NAMES


def test_a_new_per_phase_setting_is_one_declaration(tmp_path):
    """The whole change a new per-phase setting needs, scoped to this test: one field. Its
    run-wide flag, --phase key, --help, check, config.json entry and flags.txt line follow."""
    from absl import flags

    from training import settings

    @dataclasses.dataclass(frozen=True)
    class SmoothedPhase(config_lib.Phase):
        label_smoothing: float = config_lib.phase_setting(
            0.0, "label smoothing of the loss", key="smooth", flag=True,
            check=config_lib.Check(lambda v: 0 <= v < 1, "in [0, 1)"))

    fv = flags.FlagValues()
    settings.define_run_flags(fv, "scoped_test", phase_cls=SmoothedPhase)

    def config(*args):
        argv = ["t", *args]
        fv.unparse_flags()
        fv(argv)
        return settings.config_from_flags(fv, argv, phase_cls=SmoothedPhase)

    assert fv["label_smoothing"].default == 0.0
    assert "smooth= label smoothing of the loss (default --label_smoothing)" in fv["phase"].help
    cfg = config("--data=d", "--out=o", "--label_smoothing=0.1", "--phase=epochs=1",
                 "--phase=epochs=2,smooth=0.2")
    assert [p.label_smoothing for p in cfg.phases] == [0.1, 0.2]
    assert cfg.fingerprint()["phases"][1]["label_smoothing"] == 0.2
    with pytest.raises(config_lib.ConfigError, match="--label_smoothing=0.1: does not apply"):
        config("--data=d", "--out=o", "--label_smoothing=0.1", "--phase=epochs=1,smooth=0")
    with pytest.raises(config_lib.ConfigError, match=r"phase 2: smooth=1.5 must be in \[0, 1\)"):
        config_lib.validate(config("--data=d", "--out=o", "--phase=epochs=1",
                                   "--phase=epochs=2,smooth=1.5"))
    path = tmp_path / "flags.txt"
    path.write_text(settings.flags_text(cfg))
    assert "smooth=0.2" in path.read_text()
    assert config(f"--flagfile={path}").fingerprint() == cfg.fingerprint()
