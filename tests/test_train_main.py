"""train_main: flags derived from RunConfig, command-line phases and --epochs over a flagfile,
inapplicable flags refused, exit statuses, --help."""

import dataclasses
import os
import subprocess
import sys

import pytest

import train_main
from training import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


@pytest.fixture
def parse():
    """Parses an argv with train_main's flags; returns the RunConfig it builds."""
    def _parse(*args):
        argv = ["train_main", *args]
        train_main.FLAGS.unparse_flags()
        train_main.FLAGS(argv)
        return train_main.build_config(train_main.FLAGS, train_main.command_line_phases(argv))
    yield _parse
    train_main.FLAGS.unparse_flags()


def _flagfile(name):
    return f"--flagfile={os.path.join(ROOT, 'flags', name)}"


def test_every_run_config_field_is_a_flag_with_its_default():
    for field in config_lib.flag_fields():
        flag = train_main.FLAGS[field.name]
        assert flag.default == field.default, field.name
        assert flag.help.endswith(field.metadata["help"]), field.name


def test_config_from_flags_carries_every_setting(parse):
    cfg = parse("--data=d", "--out=o", "--model=net1", "--optimizer=sgd", "--seed=7",
                "--noxla", "--epochs=2", "--image_size=32")
    assert (cfg.model, cfg.optimizer, cfg.seed, cfg.xla) == ("net1", "sgd", 7, False)
    assert cfg.data == os.path.abspath("d") and cfg.out == os.path.abspath("o")
    assert [(p.epochs, p.image_size) for p in cfg.phases] == [(2, 32)]


def test_command_line_phases_replace_the_flagfiles(parse):
    cfg = parse(_flagfile("net2.flags"), "--phase=epochs=2,min_lr=1e-4,max_lr=6e-4,step_epochs=1")
    assert [p.epochs for p in cfg.phases] == [2]
    full = parse(_flagfile("net2.flags"))
    assert [p.epochs for p in full.phases] == [24, 24, 24, 12, 12, 12]


def test_epochs_over_a_flagfile_with_phases_trains_its_first_epochs(parse):
    cfg = parse(_flagfile("net1.flags"), "--epochs=20")
    assert [(p.epochs, p.image_size, p.batch_size) for p in cfg.phases] == [
        (15, 32, 256), (5, 64, 64)]
    with pytest.raises(config_lib.ConfigError, match="--epochs=999"):
        parse(_flagfile("net1.flags"), "--epochs=999")


@pytest.mark.parametrize("args, match", [
    ((_flagfile("net1.flags"), "--image_size=32"), "--image_size=32: does not apply"),
    (("--data=d", "--out=o", "--phase=epochs=1,aug=none", "--augment=student_net2"),
     "--augment=student_net2: does not apply"),
    ((_flagfile("net2.flags"), "--learning_rate=0.1"), "--learning_rate=0.1: does not apply"),
    (("--data=d", "--out=o", "--synthetic_classes=5"), "--synthetic_classes"),
])
def test_a_flag_that_cannot_apply_is_refused(parse, args, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        parse(*args)


def test_command_line_phases_are_read_from_argv_not_flagfiles():
    argv = ["x", "--flagfile=f", "--phase=epochs=1", "--phase", "epochs=2", "--", "--phase=3"]
    assert train_main.command_line_phases(argv) == ["epochs=1", "epochs=2"]


def test_exit_status_follows_the_readme_convention():
    import training
    from tinyimagenet_tfrecords import manifest as manifest_lib
    assert train_main.exit_status(config_lib.ConfigError("x")) == 2
    assert train_main.exit_status(manifest_lib.BuildError("x")) == 2
    assert train_main.exit_status(training.RunError("x")) == 2
    assert train_main.exit_status(training.RunFailure("x")) == 1
    assert train_main.exit_status(training.Diverged("x")) == 1
    assert train_main.exit_status(training.Interrupted("x")) == 130


def test_help_of_the_console_script_lists_the_flags():
    # A console script's sys.argv[0] is the wrapper, not train_main.py: absl must still list
    # the flags.
    code = ("import sys; sys.argv = ['/usr/bin/train_main', '--help']; import train_main; "
            "train_main.run()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60)
    out = proc.stdout + proc.stderr
    for name in ("--data", "--out", "--phase", "--epochs", "--model", "--lr_schedule"):
        assert name in out, (name, out[-2000:])


@pytest.mark.parametrize("command", [["train_main.py"], ["-m", "training.evaluate"]])
def test_an_unknown_flag_is_one_line_and_exit_2(command):
    proc = subprocess.run([sys.executable, *command, "--no_such_flag=1"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("Unknown command line flag "
                                                         "'no_such_flag'"), proc.stderr


@pytest.mark.slow  # a subprocess importing TensorFlow
def test_bad_model_size_is_refused_before_anything_is_written(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_main.py"), f"--data={tmp_path}/d",
         f"--out={tmp_path}/o", "--model=net1", "--image_size=60"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "image size 60" in lines[0] and "net1" in lines[0], lines
    assert not os.path.exists(tmp_path / "o")


def test_run_config_stays_a_frozen_dataclass():
    cfg = config_lib.RunConfig(data="d", out="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
