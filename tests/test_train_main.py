"""train_main: flags derived from the settings' declarations, command-line phases and --epochs
over a flagfile, inapplicable flags refused, bad values refused in seconds, flags.txt
reproducing the run, exit statuses, --help."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

import train_main
from tinyimagenet_tfrecords.features import SCHEMA_VERSION
from training import config as config_lib
from training import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


@pytest.fixture
def parse():
    """Parses an argv with train_main's flags; returns the RunConfig it builds (unchecked)."""
    def _parse(*args):
        argv = ["train_main", *args]
        train_main.FLAGS.unparse_flags()
        train_main.FLAGS(argv)
        return settings.config_from_flags(train_main.FLAGS, argv)
    yield _parse
    train_main.FLAGS.unparse_flags()


@pytest.fixture
def checked():
    """Parses an argv as train_main.main does: the checked RunConfig and its flags.txt text."""
    def _checked(*args):
        argv = ["train_main", *args]
        train_main.FLAGS.unparse_flags()
        train_main.FLAGS(argv)
        return train_main.config_and_flags_text(argv)
    yield _checked
    train_main.FLAGS.unparse_flags()


def _flagfile(name):
    return f"--flagfile={os.path.join(ROOT, 'flags', name)}"


def test_every_run_config_field_is_a_flag_with_its_default():
    for field in config_lib.flag_fields():
        flag = train_main.FLAGS[field.name]
        assert flag.default == field.default, field.name
        assert field.metadata["help"] in flag.help, field.name


def test_every_per_phase_setting_with_a_flag_has_one_and_a_phase_key_in_help():
    phase_help = train_main.FLAGS["phase"].help
    for field in dataclasses.fields(config_lib.Phase):
        assert f"{config_lib.phase_key(field)}= {field.metadata['help']}" in phase_help
        if field.metadata["flag"]:
            assert train_main.FLAGS[field.name].default == field.default, field.name


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


def test_a_flagfiles_run_wide_phase_flags_fill_command_line_phases_without_refusal(parse):
    # net2_student.flags has --augment=student_net2: a command-line phase that sets aug= is
    # not blamed on it, and a phase that leaves aug= out takes it.
    cfg = parse(_flagfile("net2_student.flags"),
                "--phase=epochs=1,aug=none,min_lr=1e-4,max_lr=6e-4,step_epochs=1",
                "--phase=epochs=1,min_lr=1e-4,max_lr=6e-4,step_epochs=1")
    assert [p.augment for p in cfg.phases] == ["none", "student_net2"]
    every = parse(_flagfile("net2_student.flags"),
                  "--phase=epochs=1,aug=none,size=32,min_lr=1e-4,max_lr=6e-4,step_epochs=1")
    assert (every.phases[0].augment, every.phases[0].image_size) == ("none", 32)


def test_epochs_over_a_flagfile_with_phases_trains_its_first_epochs(parse):
    cfg = parse(_flagfile("net1.flags"), "--epochs=20")
    assert [(p.epochs, p.image_size, p.batch_size) for p in cfg.phases] == [
        (15, 32, 256), (5, 64, 64)]


def test_a_flagfiles_epochs_cuts_its_own_phases_not_command_line_ones(parse, tmp_path):
    path = tmp_path / "short.flags"
    path.write_text("--data=d\n--out=o\n--epochs=3\n--phase=epochs=2\n--phase=epochs=4\n")
    assert [p.epochs for p in parse(f"--flagfile={path}").phases] == [2, 1]
    assert [p.epochs for p in parse(f"--flagfile={path}", "--phase=epochs=5").phases] == [5]
    assert [p.epochs for p in parse(f"--flagfile={path}", "--phase=epochs=5",
                                    "--epochs=2").phases] == [2]


@pytest.mark.parametrize("args, match", [
    ((_flagfile("net1.flags"), "--image_size=32"), "--image_size=32: does not apply"),
    (("--data=d", "--out=o", "--phase=epochs=1,aug=none", "--augment=student_net2"),
     "--augment=student_net2: does not apply"),
    ((_flagfile("net2_student.flags"), "--augment=none",
      "--phase=epochs=1,aug=none,min_lr=1e-4,max_lr=6e-4,step_epochs=1"),
     "--augment=none: does not apply"),
    ((_flagfile("net2.flags"), "--learning_rate=0.1"), "--learning_rate=0.1: does not apply"),
    (("--data=d", "--out=o", "--synthetic_classes=5"), "--synthetic_classes"),
    ((_flagfile("net1.flags"), "--epochs=999"), "--epochs=999"),
])
def test_a_flag_typed_on_the_command_line_that_cannot_apply_is_refused(parse, args, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        parse(*args)


@pytest.mark.parametrize("args, match", [
    (("--epochs=0",), r"phase 1: epochs=0 must be >= 1 \(the phase's epochs= or --epochs\)"),
    (("--image_size=4",), r"phase 1: size=4 must be in 8..512"),
    (("--model=net1", "--image_size=60"), r"image size 60: --model=net1 needs a multiple of 8"),
    (("--phase=epochs=2,batch=0",), r"phase 1: batch=0 must be >= 1"),
    (("--phase=epochs=2", "--phase=epochs=1,init=worst"), r"phase 2: init=worst must be one of"),
    (("--phase=epochs=x",), r"--phase=epochs=x: epochs=x is not a int"),
    (("--phase=epochs=1,plateau=maybe",), r"plateau=maybe is not on/off"),
    (("--phase=size=32",), r"--phase=size=32: needs epochs="),
    (("--phase=epochs=1,colour=red",), r"bad item 'colour=red'"),
    (("--augment=nope",), r"phase 1: augmentation 'nope' not one of"),
    (("--model=net9",), r"--model=net9: one of"),
    (("--width=0",), r"--width=0.0: must be > 0"),
    (("--seed=-1",), r"--seed=-1: must be in 0..2147483647"),
    (("--worst_classes=0",), r"--worst_classes=0: must be >= 1"),
    (("--val_image_size=60",), r"--val_image_size=60: must be a multiple of 8"),
])
def test_a_bad_value_is_refused_naming_the_flag_or_phase(checked, args, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        checked("--data=d", "--out=o", *args)


@pytest.mark.parametrize("args", [
    (_flagfile("demo.flags"),),
    (_flagfile("demo.flags"), "--epochs=5"),
    (_flagfile("net1.flags"), "--epochs=20", "--noxla"),
    (_flagfile("net2.flags"), "--phase=epochs=2,min_lr=1e-4,max_lr=6e-4,step_epochs=1"),
    (_flagfile("net2_student.flags"), "--phase=epochs=1,aug=none,min_lr=1e-4,max_lr=6e-4,"
     "step_epochs=1", "--phase=epochs=2,min_lr=1e-4,max_lr=6e-4,step_epochs=1,init=best"),
    ("--data=gs://bucket/d", "--out=o", "--epochs=3", "--image_size=32", "--plateau",
     "--make_synthetic_data", "--synthetic_classes=4"),
])
def test_flags_txt_fed_back_reproduces_the_config(checked, tmp_path, args):
    cfg, text = checked(*args)
    path = tmp_path / "flags.txt"
    path.write_text(text)
    again, text_again = checked(f"--flagfile={path}")
    assert again.fingerprint() == cfg.fingerprint()
    assert again.to_dict() == cfg.to_dict() and text_again == text
    assert text.count("--phase=") == len(cfg.phases)


def test_flags_txt_keeps_the_demo_data_flags(checked):
    _, text = checked(_flagfile("demo.flags"))
    assert "--make_synthetic_data\n" in text and "--synthetic_classes=10" not in text  # default
    _, text = checked("--data=d", "--out=o", "--make_synthetic_data", "--synthetic_classes=4")
    assert "--synthetic_classes=4\n" in text


def test_typed_flags_are_read_from_argv_not_flagfiles():
    argv = ["x", "--flagfile=f", "--phase=epochs=1", "--phase", "epochs=2", "--noxla",
            "--augment", "none", "--", "--phase=3"]
    typed = settings.typed_flags(argv, train_main.FLAGS)
    assert typed == {"phase": ["epochs=1", "epochs=2"], "xla": [], "augment": ["none"]}


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


@pytest.mark.parametrize("command, args, match", [
    (["train_main.py"], ["--model=net1", "--image_size=60"], "image size 60"),
    (["train_main.py"], ["--epochs=0"], "epochs=0"),
    (["train_main.py"], ["--augment=nope"], "augmentation 'nope'"),
    (["-m", "training.evaluate"], ["--worst_classes=0"], "--worst_classes=0: must be >= 1"),
    (["-m", "training.evaluate"], ["--image_size=60"], "--image_size=60: must be a multiple"),
    (["-m", "training.evaluate"], ["--split=test"], "unlabelled"),
])
def test_a_bad_value_is_refused_in_seconds_before_anything_is_written(
        tmp_path, command, args, match):
    # Before TensorFlow is imported (11-23 s) or a model loaded (20-30 s): under 5 s wall.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "classes": [],
        "splits": {"test": {"labelled": False, "shards": []}}}))
    (tmp_path / "m.keras").write_bytes(b"")
    paths = [f"--data={tmp_path}/d", f"--out={tmp_path}/o"]
    if command[0] == "-m":
        paths.append(f"--model={tmp_path}/m.keras")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *command, *paths, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], lines
    assert not os.path.exists(tmp_path / "o")
    assert elapsed < 5, f"refused after {elapsed:.1f} s"


def test_checking_settings_imports_no_tensorflow():
    # A fresh process: train_main's and evaluate's checks run, then no TensorFlow is loaded.
    code = """
import sys
from absl import flags
import train_main
from training import config, evaluate, settings
argv = ["train_main", "--data=d", "--out=o", "--model=net1", "--image_size=60"]
train_main.FLAGS(argv)
try:
    train_main.config_and_flags_text(argv)
except config.ConfigError as e:
    print("refused", e)
fv = flags.FlagValues()
settings.define_eval_flags(fv, "evaluate")
fv(["evaluate", "--worst_classes=0"])
try:
    settings.eval_settings(fv)
except config.ConfigError as e:
    print("refused", e)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "refused phase 1: image size 60: --model=net1 needs a multiple of 8 (--image_size or "
        "the phase's size=)", "refused --worst_classes=0: must be >= 1", "[]"], proc.stdout


def test_run_config_stays_a_frozen_dataclass():
    cfg = config_lib.RunConfig(data="d", out="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
