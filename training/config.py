"""Run settings: each declared once, in frozen dataclasses validated up front.

Every setting is a dataclass field declared with :func:`setting` (run-wide) or
:func:`phase_setting` (per curriculum phase): its type, default, help text and :class:`Check`.
Flags, ``--help``, the ``--phase`` grammar, ``config.json`` and validation are derived from
these declarations (``training.settings`` turns them into absl flags); adding a per-phase
setting is one :class:`Phase` field plus its use.

A run is a list of *phases* (a curriculum). Each phase has a length in epochs and may override
the image size, the global batch size, the augmentation recipe, the Triangular2 cycle
(``min_lr``, ``max_lr``, ``step_epochs``) and whether ReduceLROnPlateau is active. One flag
per phase, repeated in order::

    --phase=epochs=15,size=32,batch=256,aug=none,plateau=on
    --phase=epochs=24,min_lr=1e-4,max_lr=6e-4,step_epochs=6

Keys left out inherit the run-wide flags (``--image_size``, ``--batch_size``, ``--augment``,
``--plateau``); with no ``--phase`` at all the run is one phase of ``--epochs``.

This module imports no TensorFlow: settings are checked before TensorFlow starts (seconds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Callable

SCHEDULES = ("constant", "triangular2")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored", "default", "multiworker")
# Every model downsamples by 8 (three 2x2 poolings / SpaceToDepth; the smoke-test network asks
# the same so that it takes every size the others do): its input side must be a multiple of
# this (``models.layers.check_image_size``; a test pins the table to models/).
SIZE_MULTIPLE = {"net1": 8, "net1_student": 8, "net2": 8, "smoke": 8}
# The built-in augmentation recipes (a test pins them to ``augment.RECIPE_NAMES``): flags are
# checked against them before TensorFlow is imported; ``training.run`` checks again against
# ``augment.recipe_names()``, which includes recipes registered in-process.
BUILTIN_RECIPES = ("student_net2", "original_net2", "original_net1", "none")
# Where a phase starts from: the previous phase's last weights or its best (val top-1) ones.
PHASE_INITS = ("last", "best")


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule a setting's value must follow; ``text`` completes "must be ..." in a refusal."""

    ok: Callable[[Any], bool]
    text: str


def at_least(low) -> Check:
    return Check(lambda v: v >= low, f">= {low}")


def above(low) -> Check:
    return Check(lambda v: v > low, f"> {low}")


def within(low, high) -> Check:
    return Check(lambda v: low <= v <= high, f"in {low}..{high}")


def one_of(choices: tuple[str, ...]) -> Check:
    return Check(lambda v: v in choices, f"one of {', '.join(choices)}")


def image_size_check() -> Check:
    """Sizes some model can take: in 8..512 and a multiple of what every model needs."""
    step = math.gcd(*SIZE_MULTIPLE.values())
    return Check(lambda v: 8 <= v <= 512 and v % step == 0, f"a multiple of {step} in 8..512")


def setting(default: Any, help: str, *, runtime_only: bool = False,
            choices: tuple[str, ...] | None = None, check: Check | None = None) -> Any:
    """A run-wide setting declared once: default, flag help, validation, and whether it
    changes the trained result (``runtime_only`` settings may differ on resume).

    ``choices`` makes the flag an enum (and is checked like ``check``).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "runtime_only": runtime_only, "choices": choices, "flag": True,
        "check": check or (one_of(choices) if choices else None)})


def phase_setting(default: Any, help: str, *, key: str | None = None, flag: bool = False,
                  flag_help: str | None = None, required: bool = False,
                  choices: tuple[str, ...] | None = None, check: Check | None = None) -> Any:
    """A per-phase setting declared once (a :class:`Phase` field).

    Args:
      default: the value when neither the phase nor a run-wide flag sets it.
      help: what it is (``--help`` of ``--phase`` and of its run-wide flag).
      key: its ``--phase`` key (default: the field name).
      flag: a run-wide flag of the field's name gives the value of phases that leave ``key``
        out (and of the single phase when no ``--phase`` is given).
      flag_help: that flag's help, when it says more than ``help``.
      required: every ``--phase`` must set ``key``.
      choices, check: the rule its values follow (checked per phase).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "key": key, "flag": flag, "flag_help": flag_help, "required": required,
        "choices": choices, "check": check or (one_of(choices) if choices else None)})


def flag_fields(cls: type | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` (default :class:`RunConfig`) that are flags (all but ``phases``)."""
    return [f for f in dataclasses.fields(cls or RunConfig) if f.metadata.get("flag")]


def runtime_only_keys() -> tuple[str, ...]:
    """The settings a resumed run may change (they change nothing about the trained result)."""
    return tuple(f.name for f in dataclasses.fields(RunConfig)
                 if f.metadata.get("runtime_only"))


def value_type(cls: type, field: dataclasses.Field) -> type:
    """The declared type of ``field`` without ``None`` (``float | None`` -> ``float``)."""
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def phase_key(field: dataclasses.Field) -> str:
    """The ``--phase`` key of a :class:`Phase` field."""
    return field.metadata.get("key") or field.name


class ConfigError(ValueError):
    """A flag or phase is out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """One curriculum phase (all values resolved, nothing inherited).

    Each field is declared once with :func:`phase_setting`; its ``--phase`` key, run-wide flag,
    help and check are derived from that (``training.settings``, :func:`parse_phase`,
    :func:`validate`).
    """

    epochs: int = phase_setting(
        1, "epochs of the phase", required=True, flag=True, check=at_least(1),
        flag_help="epochs of the single phase when no --phase is given; with phases, train "
        "only the curriculum's first N epochs")
    image_size: int = phase_setting(64, "training image size", key="size", flag=True,
                                    check=within(8, 512))
    batch_size: int = phase_setting(128, "global batch size (split across replicas)",
                                    key="batch", flag=True, check=at_least(1))
    augment: str = phase_setting("none", "augmentation recipe (augment.RECIPE_NAMES)",
                                 key="aug", flag=True)
    plateau: bool = phase_setting(False, "ReduceLROnPlateau on val_loss (with "
                                  "--lr_schedule=constant)", flag=True)
    min_lr: float | None = phase_setting(None, "Triangular2: the cycle's lowest learning rate")
    max_lr: float | None = phase_setting(None, "Triangular2: the cycle's highest learning rate")
    step_epochs: float | None = phase_setting(None, "Triangular2: epochs of a half cycle")
    init: str = phase_setting("last", "start from the previous phase's last or best (val "
                              "top-1) weights", choices=PHASE_INITS)

    @property
    def signature(self) -> tuple:
        """What a compiled train step depends on: a new one is traced per distinct value."""
        return (self.image_size, self.batch_size, self.augment)


def _phase_flag(name: str) -> Any:
    """A :class:`RunConfig` field that records a per-phase setting's run-wide flag (declared
    by the :class:`Phase` field; kept in ``config.json``)."""
    field = {f.name: f for f in dataclasses.fields(Phase)}[name]
    return dataclasses.field(default=field.default, metadata={
        "help": field.metadata["help"], "runtime_only": False, "choices": None, "flag": True,
        "check": None, "phase_flag": True})


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The evaluation settings of ``python -m training.evaluate``; a run's final report uses
    the same declarations (:class:`RunConfig` ``eval_batch_size``, ``val_image_size``,
    ``misclassified``, ``worst_classes``)."""

    image_size: int | None = setting(
        None, "evaluation image size; default: the model's own input size, or 64 for a model "
        "that takes any size", check=image_size_check())
    batch_size: int = setting(256, "evaluation batch size", check=at_least(1))
    misclassified: int = setting(36, "images in the misclassified grid", check=at_least(0))
    worst_classes: int = setting(10, "worst classes to list and plot", check=at_least(1))


def _eval_setting(name: str, **override) -> Any:
    """A :class:`RunConfig` field declared by the :class:`EvalSettings` field ``name``."""
    field = {f.name: f for f in dataclasses.fields(EvalSettings)}[name]
    meta = {**field.metadata, **{k: v for k, v in override.items() if k != "default"}}
    return dataclasses.field(default=override.get("default", field.default), metadata=meta)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run depends on. ``training.run(config)`` reads nothing else.

    Each field is declared once with :func:`setting`: ``train_main`` defines one flag per field
    from its type, default, help text and ``choices``; ``runtime_only`` fields may differ when a
    run is resumed (they change nothing about the trained result).
    """

    data: str = setting(None, "a finished TFRecord build (tinyimagenet_tfrecords.build)")
    out: str = setting(None, "output folder of this run (resumed if it holds this run)")
    model: str = setting("net2", "network: net1, net1_student or net2 (or smoke: a three-conv "
                                "network for tests and quick CPU runs)")
    width: float = setting(1.0, "filter-count multiplier (tiny variants for CPU demos)",
                           check=above(0))
    phases: tuple[Phase, ...] = dataclasses.field(default=(), metadata={"flag": False})
    batch_size: int = _phase_flag("batch_size")
    steps_per_epoch: int = setting(0, "steps per epoch; 0 = one pass over the training "
                                   "split", check=at_least(0))
    steps_per_call: int = setting(1, "train steps per compiled call (fewer Python round trips; "
                                  "progress updates once per call)", runtime_only=True,
                                  check=at_least(1))
    bn_momentum: float = setting(0.0, "BatchNorm moving-average momentum; 0 keeps the model's "
                                 "(0.99). Short CPU runs: 0.9",
                                 check=Check(lambda v: 0 <= v < 1, "in [0, 1)"))
    val_image_size: int = _eval_setting("image_size", default=64, help="validation image size "
                                        "(and of the final report)")
    eval_batch_size: int = _eval_setting("batch_size", runtime_only=True,
                                         help="validation batch size")
    optimizer: str = setting("adam", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = setting(1e-3, "learning rate (constant schedule)",
                                   check=above(0))
    epsilon: float = setting(1e-7, "optimizer epsilon (Adam/RMSprop)", check=above(0))
    rmsprop_epsilon_outside_root: bool = setting(
        False, "RMSprop adds epsilon outside the square root, lr*g/(sqrt(v)+eps), as Keras "
        "2.2.4 (the authors') did; Keras 3 computes lr*g/sqrt(v+eps)")
    lr_schedule: str = setting("constant", "constant (+ optional ReduceLROnPlateau) or "
                               "Triangular2 phases", choices=SCHEDULES)
    plateau_factor: float = setting(math.sqrt(0.1), "ReduceLROnPlateau factor",
                                    check=Check(lambda v: 0 < v < 1, "in (0, 1)"))
    plateau_patience: int = setting(5, "ReduceLROnPlateau patience (epochs)",
                                   check=at_least(0))
    plateau_min_lr: float = setting(5e-7, "ReduceLROnPlateau minimum learning rate")
    precision: str = setting("float32", "compute precision", choices=PRECISIONS)
    sync_bn: bool = setting(
        False, "synchronised BatchNorm: batch statistics over all replicas' examples "
        "(recommended when the per-replica batch is below 16)")
    xla: bool = setting(True, "compile the per-replica train step with XLA")
    strategy: str = setting("auto", "auto: MultiWorkerMirroredStrategy under a multi-worker "
                            "TF_CONFIG, else MirroredStrategy over several GPUs, else default; "
                            "multiworker: force the multi-worker strategy",
                            choices=STRATEGIES)
    cluster_timeout: float = setting(
        300.0, "multi-worker: seconds to wait for every worker of TF_CONFIG to join (and for "
        "a silent worker before the others give up)", runtime_only=True, check=above(0))
    seed: int = setting(0, "base seed of initialisation, data order and augmentation",
                        check=within(0, 2 ** 31 - 1))
    deterministic: bool = setting(False, "enable TF op determinism (exact resume/repeat; the "
                                  "train step then runs without XLA)")
    checkpoint_every: int = setting(1, "checkpoint every N epochs (and at the end)",
                                    runtime_only=True, check=at_least(1))
    keep_checkpoints: int = setting(3, "checkpoints kept", runtime_only=True,
                                    check=at_least(1))
    misclassified: int = _eval_setting("misclassified", help="images in the final "
                                       "misclassified grid")
    worst_classes: int = _eval_setting("worst_classes", help="worst classes in the final report")
    progress: bool = setting(True, "show a progress bar (on stderr)", runtime_only=True)
    export: bool = setting(True, "when training ends, export best.keras as a SavedModel into "
                           "<out>/export (training.export)", runtime_only=True)

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["phases"] = [dataclasses.asdict(p) for p in self.phases]
        return d

    def fingerprint(self) -> dict[str, Any]:
        """The settings that define the run's results (compared on resume)."""
        d = self.to_dict()
        for k in runtime_only_keys():
            d.pop(k, None)
        return json.loads(json.dumps(d))  # normalise tuples/floats as JSON would

    def phase_start(self, index: int) -> int:
        """The 0-based first epoch of phase ``index``."""
        return sum(p.epochs for p in self.phases[:index])

    def phase_at(self, epoch: int) -> tuple[int, Phase]:
        """(index, phase) of the 0-based ``epoch``."""
        end = 0
        for i, p in enumerate(self.phases):
            end += p.epochs
            if epoch < end:
                return i, p
        raise IndexError(f"epoch {epoch} is past the last phase ({self.total_epochs} epochs)")


_BOOL = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False,
         "yes": True, "no": False}


def parse_value(text: str, kind: type) -> Any:
    """``text`` as a value of ``kind`` (int, float, bool: on/off/true/false/1/0/yes/no, str).

    Raises:
      ValueError: ``text`` is not such a value.
    """
    if kind is bool:
        if text.lower() not in _BOOL:
            raise ValueError("not on/off")
        return _BOOL[text.lower()]
    return kind(text)


def parse_phase(spec: str, *, phase_cls: type = Phase, **defaults: Any) -> Phase:
    """Parses one ``key=value,...`` phase spec, filling left-out keys from ``defaults`` (field
    name -> value: the run-wide flags), else from the field's declared default."""
    fields = {phase_key(f): f for f in dataclasses.fields(phase_cls)}
    given: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ConfigError(f"--phase={spec}: bad item {item!r} (keys: {', '.join(fields)})")
        given[key] = value.strip()
    values = {}
    for key, field in fields.items():
        if key in given:
            kind = value_type(phase_cls, field)
            try:
                values[field.name] = parse_value(given[key], kind)
            except ValueError:
                raise ConfigError(f"--phase={spec}: {key}={given[key]} is not "
                                  f"{'on/off' if kind is bool else 'a ' + kind.__name__}") from None
        elif field.metadata.get("required"):
            raise ConfigError(f"--phase={spec}: needs {key}=")
        elif field.name in defaults:
            values[field.name] = defaults[field.name]
    return phase_cls(**values)


def check_settings(obj: Any) -> None:
    """Raises :class:`ConfigError` naming the first flag of the settings dataclass ``obj``
    whose value breaks its declared :class:`Check` (``None`` means unset and passes)."""
    for field in dataclasses.fields(obj):
        check, value = field.metadata.get("check"), getattr(obj, field.name)
        if check is not None and value is not None and not check.ok(value):
            raise ConfigError(f"--{field.name}={value}: must be {check.text}")


def check_phase(phase: Phase, index: int) -> None:
    """Raises :class:`ConfigError` naming phase ``index`` (1-based), the key and, where one
    gives the value, the run-wide flag, for the first value that breaks its :class:`Check`."""
    for field in dataclasses.fields(phase):
        check, value = field.metadata.get("check"), getattr(phase, field.name)
        if check is not None and value is not None and not check.ok(value):
            key = phase_key(field)
            source = f" (the phase's {key}= or --{field.name})" if field.metadata["flag"] else ""
            raise ConfigError(f"phase {index}: {key}={value} must be {check.text}{source}")


def validate(cfg: RunConfig, *, recipe_names=None, model_names=None) -> None:
    """Raises :class:`ConfigError` with a one-line message for the first bad setting.

    Args:
      recipe_names, model_names: the accepted ``augment`` recipes and models (None: any).
    """
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    need(bool(cfg.data), "--data is required (a build folder)")
    need(bool(cfg.out), "--out is required (the run's output folder)")
    need(cfg.phases, "no epochs to train: give --epochs >= 1 or at least one --phase")
    need(model_names is None or cfg.model in model_names,
         f"--model={cfg.model}: one of {tuple(model_names or ())}")
    check_settings(cfg)
    multiple = SIZE_MULTIPLE.get(cfg.model, 1)
    need(cfg.val_image_size % multiple == 0,
         f"--val_image_size={cfg.val_image_size}: --model={cfg.model} needs a multiple of "
         f"{multiple}")
    need(not cfg.rmsprop_epsilon_outside_root or cfg.optimizer == "rmsprop",
         "--rmsprop_epsilon_outside_root needs --optimizer=rmsprop")
    for i, p in enumerate(cfg.phases, 1):
        where = f"phase {i}"
        check_phase(p, i)
        need(i > 1 or p.init == "last", f"{where}: init=best needs a previous phase")
        need(p.image_size % multiple == 0,
             f"{where}: image size {p.image_size}: --model={cfg.model} needs a multiple of "
             f"{multiple} (--image_size or the phase's size=)")
        need(recipe_names is None or p.augment in recipe_names,
             f"{where}: augmentation {p.augment!r} not one of {tuple(recipe_names or ())}")
        if cfg.lr_schedule == "triangular2":
            need(None not in (p.min_lr, p.max_lr, p.step_epochs),
                 f"{where}: --lr_schedule=triangular2 needs min_lr, max_lr, step_epochs")
            need(0 < p.min_lr <= p.max_lr, f"{where}: need 0 < min_lr <= max_lr")
            need(p.step_epochs > 0, f"{where}: step_epochs must be > 0")
            need(not p.plateau, f"{where}: plateau=on needs --lr_schedule=constant")


def validate_flags(cfg: RunConfig) -> None:
    """:func:`validate` against the built-in models and recipes, without importing
    TensorFlow: what ``train_main`` checks before it starts TensorFlow."""
    validate(cfg, recipe_names=BUILTIN_RECIPES, model_names=tuple(SIZE_MULTIPLE))


def first_epochs(phases: tuple[Phase, ...], epochs: int) -> tuple[Phase, ...]:
    """The curriculum cut after its first ``epochs`` epochs (a short try of a recipe).

    Raises:
      ConfigError: ``epochs`` is below 1 or beyond the curriculum's length.
    """
    total = sum(p.epochs for p in phases)
    if not 1 <= epochs <= total:
        raise ConfigError(f"--epochs={epochs}: the phases have {total} epochs; give 1..{total} "
                          "to train the first N of them")
    kept, left = [], epochs
    for p in phases:
        if left <= 0:
            break
        kept.append(dataclasses.replace(p, epochs=min(p.epochs, left)))
        left -= p.epochs
    return tuple(kept)
