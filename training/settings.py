"""Flags derived from the settings declared in :mod:`training.config`, and back.

Each setting is declared once, as a dataclass field (``config.setting`` for a run-wide setting,
``config.phase_setting`` for a per-phase one); this module turns those declarations into absl
flags (type, default, help, enum choices), turns parsed flags into a
:class:`~training.config.RunConfig` (the phase-default rules), and writes a run's settings as a
flagfile that reproduces it. It imports no TensorFlow, so bad values are refused in a second.

Where a value comes from matters: a flagfile holds defaults, the command line decides.
``--phase`` flags on the command line replace the flagfile's; a run-wide phase flag
(``--image_size``, ``--batch_size``, ``--augment``, ``--plateau``) fills the keys the phases
leave out, and is refused as "does not apply" only when typed on the command line (a copied
flagfile's ``--augment`` never blocks a command-line ``--phase=...,aug=...``).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterable

from absl import flags

from plumbing import paths
from training import config as config_lib

# Flags that do not apply without --make_synthetic_data (train_main defines them).
SYNTHETIC_FLAGS = ("synthetic_classes", "synthetic_train_per_class", "synthetic_val_per_class")


def define_flags(cls: type, flag_values: flags.FlagValues, module_name: str, *,
                 skip: Iterable[str] = ()) -> None:
    """One flag per flag field of the settings dataclass ``cls`` (type, default, help and
    choices from the field's declaration).

    Args:
      module_name: the ``__name__`` of the program whose ``--help`` lists the flags.
      skip: field names defined elsewhere.
    """
    definers = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
                str: flags.DEFINE_string}
    for field in config_lib.flag_fields(cls):
        if field.name in skip:
            continue
        help_text = _flag_help(field)
        kw = dict(flag_values=flag_values, module_name=_absl_module_name(module_name))
        if field.metadata.get("choices"):
            flags.DEFINE_enum(field.name, field.default, list(field.metadata["choices"]),
                              help_text, **kw)
        else:
            definers[config_lib.value_type(cls, field)](field.name, field.default, help_text,
                                                       **kw)


def _flag_help(field: dataclasses.Field) -> str:
    """A flag's help: the declared help; a per-phase setting's flag says which phases it sets."""
    meta = field.metadata
    if meta.get("flag_help") or "key" not in meta:
        return meta.get("flag_help") or meta["help"]
    return (f"{meta['help']}: of the phases that set no {config_lib.phase_key(field)}= (and of "
            "the single phase when no --phase is given)")


def _absl_module_name(module_name: str) -> str:
    """The name absl files a module's flags under (a script's path for ``__main__``)."""
    return sys.argv[0] if module_name == "__main__" else module_name


def phase_help(phase_cls: type = config_lib.Phase) -> str:
    """The ``--phase`` flag's help: its grammar, from the :class:`~training.config.Phase`
    declarations."""
    keys = []
    for field in dataclasses.fields(phase_cls):
        key = config_lib.phase_key(field)
        source = ("required" if field.metadata.get("required") else
                  f"default --{field.name}" if field.metadata.get("flag") else
                  f"default {field.default}")
        keys.append(f"{key}= {field.metadata['help']} ({source})")
    return ("a curriculum phase 'key=value,...'; repeat in order. On the command line they "
            "replace a flagfile's. Keys: " + "; ".join(keys))


def define_run_flags(flag_values: flags.FlagValues, module_name: str, *,
                     config_cls: type = config_lib.RunConfig,
                     phase_cls: type = config_lib.Phase) -> None:
    """Every flag of a training run: one per :class:`RunConfig` field, ``--phase`` and one
    run-wide flag per per-phase setting that has one (``--epochs``, ``--image_size``, ...)."""
    phase_flags = [f for f in dataclasses.fields(phase_cls) if f.metadata.get("flag")]
    define_flags(phase_cls, flag_values, module_name)
    define_flags(config_cls, flag_values, module_name, skip=[f.name for f in phase_flags])
    flags.DEFINE_multi_string("phase", [], phase_help(phase_cls), flag_values=flag_values,
                              module_name=_absl_module_name(module_name))


def typed_flags(argv: list[str], flag_values: flags.FlagValues) -> dict[str, list[str]]:
    """The flags typed on the command line itself (not read from a flagfile): name -> the
    values given (``[]`` for a boolean's ``--name``/``--noname``)."""
    typed: dict[str, list[str]] = {}
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, sep, value = arg.lstrip("-").partition("=")
        if name not in flag_values and name.startswith("no") and name[2:] in flag_values:
            typed.setdefault(name[2:], [])
            continue
        if name not in flag_values or name == "flagfile":
            continue
        if not sep and not isinstance(flag_values[name], flags.BooleanFlag):
            value = args[i + 1] if i + 1 < len(args) else ""
        typed.setdefault(name, []).extend([value] if sep or value else [])
    return typed


def _phases(values: flags.FlagValues, typed: dict[str, list[str]],
            phase_cls: type) -> tuple[config_lib.Phase, ...]:
    """The curriculum: command-line ``--phase`` flags (else the flagfile's), keys left out
    taken from the run-wide flags; or one phase of ``--epochs``."""
    fields = [f for f in dataclasses.fields(phase_cls) if f.metadata.get("flag")]
    defaults = {f.name: values[f.name].value for f in fields if f.name != "epochs"}
    specs = typed["phase"] if typed.get("phase") else list(values.phase)
    if not specs:
        return (phase_cls(epochs=values.epochs, **defaults),)
    phases = tuple(config_lib.parse_phase(s, phase_cls=phase_cls, **defaults) for s in specs)
    for field in fields:
        key = config_lib.phase_key(field)
        if field.name in typed and field.name != "epochs" and all(
                _sets_key(s, key) for s in specs):
            raise config_lib.ConfigError(
                f"--{field.name}={values[field.name].value}: does not apply, every --phase "
                f"sets {key}=")
    # --epochs cuts the curriculum when typed, or when it came with the phases (a flagfile).
    if "epochs" in typed or (values["epochs"].present and not typed.get("phase")):
        phases = config_lib.first_epochs(phases, values.epochs)
    return phases


def _sets_key(spec: str, key: str) -> bool:
    return any(item.partition("=")[0].strip() == key for item in spec.split(","))


def config_from_flags(values: flags.FlagValues, argv: list[str], *,
                      config_cls: type = config_lib.RunConfig,
                      phase_cls: type = config_lib.Phase) -> config_lib.RunConfig:
    """The run settings from parsed flags ``values`` and the command line ``argv`` they were
    parsed from (which says what was typed and what came from a flagfile).

    Raises:
      config.ConfigError: a flag typed on the command line that cannot apply, or a phase
        that does not parse.
    """
    typed = typed_flags(argv, values)
    phases = _phases(values, typed, phase_cls)
    if values.lr_schedule == "triangular2" and "learning_rate" in typed:
        raise config_lib.ConfigError(
            f"--learning_rate={values.learning_rate}: does not apply with "
            "--lr_schedule=triangular2 (each --phase sets min_lr/max_lr)")
    if "make_synthetic_data" in values and not values.make_synthetic_data:
        for name in SYNTHETIC_FLAGS:
            if name in typed:
                raise config_lib.ConfigError(f"--{name}: does not apply without "
                                             "--make_synthetic_data")
    kwargs = {f.name: values[f.name].value for f in config_lib.flag_fields(config_cls)}
    for key in ("data", "out"):
        if kwargs[key]:
            kwargs[key] = paths.abspath(kwargs[key])  # URLs (gs://, ram://, ...) unchanged
    return config_cls(phases=phases, **kwargs)


def _flag_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}"


def _spec_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, float) else str(value)


def phase_spec(phase: config_lib.Phase) -> str:
    """``phase`` as a ``--phase`` value that sets every key (parses back to ``phase``)."""
    return ",".join(f"{config_lib.phase_key(f)}={_spec_text(getattr(phase, f.name))}"
                    for f in dataclasses.fields(phase) if getattr(phase, f.name) is not None)


def flags_text(cfg: config_lib.RunConfig, extra: Iterable[flags.Flag] = ()) -> str:
    """A flagfile that reproduces ``cfg``: every setting, every phase with every key, and the
    ``extra`` flags (e.g. train_main's synthetic-data flags) that differ from their default.

    ``train_main --flagfile=<out>/flags.txt`` builds a config with the same fingerprint.
    """
    lines = ["# The settings of this run: train_main --flagfile=<this file> reproduces its "
             "config.json (flags after it override)."]
    for field in config_lib.flag_fields(type(cfg)):
        value = getattr(cfg, field.name)
        if value is not None:
            lines.append(_flag_text(field.name, value))
    lines += [f"--phase={phase_spec(p)}" for p in cfg.phases]
    lines += [_flag_text(f.name, f.value) for f in extra
              if f.value != f.default and f.value is not None]
    return "\n".join(lines) + "\n"


def define_eval_flags(flag_values: flags.FlagValues, module_name: str) -> None:
    """The evaluation settings' flags (``config.EvalSettings``)."""
    define_flags(config_lib.EvalSettings, flag_values, module_name)


def eval_settings(values: flags.FlagValues) -> config_lib.EvalSettings:
    """The checked evaluation settings from parsed flags (``ConfigError`` names a bad one)."""
    settings = config_lib.EvalSettings(**{
        f.name: values[f.name].value for f in config_lib.flag_fields(config_lib.EvalSettings)})
    config_lib.check_settings(settings)
    return settings
