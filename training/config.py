"""Run settings: one frozen dataclass built by ``train_main`` from flags, validated up front.

A run is a list of *phases* (a curriculum). Each phase has a length in epochs and may override
the image size, the global batch size, the augmentation recipe, the Triangular2 cycle
(``min_lr``, ``max_lr``, ``step_epochs``) and whether ReduceLROnPlateau is active. One flag
per phase, repeated in order::

    --phase=epochs=15,size=32,batch=256,aug=none,plateau=on
    --phase=epochs=24,min_lr=1e-4,max_lr=6e-4,step_epochs=6

Keys left out inherit the run-wide flags (``--image_size``, ``--batch_size``, ``--augment``,
``--plateau``); with no ``--phase`` at all the run is one phase of ``--epochs``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

SCHEDULES = ("constant", "triangular2")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored", "default", "multiworker")
# Every model downsamples by 8 (three 2x2 poolings / SpaceToDepth): its input side must be a
# multiple of this (``models.layers.check_image_size``; a test pins the table to models/).
SIZE_MULTIPLE = {"net1": 8, "net1_student": 8, "net2": 8}


def setting(default: Any, help: str, *, runtime_only: bool = False,
            choices: tuple[str, ...] | None = None) -> Any:
    """A :class:`RunConfig` field declared once: its default, its flag's help text, and whether
    it changes the trained result (``runtime_only`` settings may differ on resume).

    ``choices`` makes the flag an enum; ``validate`` checks the value either way.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "runtime_only": runtime_only, "choices": choices, "flag": True})


def flag_fields() -> list[dataclasses.Field]:
    """The :class:`RunConfig` fields that are command-line flags (all but ``phases``)."""
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("flag")]


def runtime_only_keys() -> tuple[str, ...]:
    """The settings a resumed run may change (they change nothing about the trained result)."""
    return tuple(f.name for f in dataclasses.fields(RunConfig)
                 if f.metadata.get("runtime_only"))


class ConfigError(ValueError):
    """A flag or phase is out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """One curriculum phase (all values resolved, nothing inherited)."""

    epochs: int
    image_size: int
    batch_size: int
    augment: str
    plateau: bool
    min_lr: float | None = None
    max_lr: float | None = None
    step_epochs: float | None = None
    init: str = "last"

    @property
    def signature(self) -> tuple:
        """What a compiled train step depends on: a new one is traced per distinct value."""
        return (self.image_size, self.batch_size, self.augment)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run depends on. ``training.run(config)`` reads nothing else.

    Each field is declared once with :func:`setting`: ``train_main`` defines one flag per field
    from its type, default, help text and ``choices``; ``runtime_only`` fields may differ when a
    run is resumed (they change nothing about the trained result).
    """

    data: str = setting(None, "a finished TFRecord build (tinyimagenet_tfrecords.build)")
    out: str = setting(None, "output folder of this run (resumed if it holds this run)")
    model: str = setting("net2", "network: net1, net1_student or net2")
    width: float = setting(1.0, "filter-count multiplier (tiny variants for CPU demos)")
    phases: tuple[Phase, ...] = dataclasses.field(default=(), metadata={"flag": False})
    batch_size: int = setting(128, "global batch size (split across replicas; phases may "
                              "override)")
    steps_per_epoch: int = setting(0, "steps per epoch; 0 = one pass over the training split")
    steps_per_call: int = setting(1, "train steps per compiled call (fewer Python round trips; "
                                  "progress updates once per call)", runtime_only=True)
    bn_momentum: float = setting(0.0, "BatchNorm moving-average momentum; 0 keeps the model's "
                                 "(0.99). Short CPU runs: 0.9")
    val_image_size: int = setting(64, "validation image size")
    eval_batch_size: int = setting(256, "validation batch size", runtime_only=True)
    optimizer: str = setting("adam", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = setting(1e-3, "learning rate (constant schedule)")
    epsilon: float = setting(1e-7, "optimizer epsilon (Adam/RMSprop)")
    rmsprop_epsilon_outside_root: bool = setting(
        False, "RMSprop adds epsilon outside the square root, lr*g/(sqrt(v)+eps), as Keras "
        "2.2.4 (the authors') did; Keras 3 computes lr*g/sqrt(v+eps)")
    lr_schedule: str = setting("constant", "constant (+ optional ReduceLROnPlateau) or "
                               "Triangular2 phases", choices=SCHEDULES)
    plateau_factor: float = setting(math.sqrt(0.1), "ReduceLROnPlateau factor")
    plateau_patience: int = setting(5, "ReduceLROnPlateau patience (epochs)")
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
        "a silent worker before the others give up)", runtime_only=True)
    seed: int = setting(0, "base seed of initialisation, data order and augmentation")
    deterministic: bool = setting(False, "enable TF op determinism (exact resume/repeat)")
    checkpoint_every: int = setting(1, "checkpoint every N epochs (and at the end)",
                                    runtime_only=True)
    keep_checkpoints: int = setting(3, "checkpoints kept", runtime_only=True)
    misclassified: int = setting(36, "images in the final misclassified grid")
    worst_classes: int = setting(10, "worst classes in the final report")
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
_PHASE_KEYS = ("epochs", "size", "batch", "aug", "plateau", "min_lr", "max_lr", "step_epochs",
               "init")
# Where a phase starts from: the previous phase's last weights or its best (val top-1) ones.
PHASE_INITS = ("last", "best")


def parse_phase(spec: str, *, image_size: int, batch_size: int, augment: str,
                plateau: bool) -> Phase:
    """Parses one ``key=value,...`` phase spec, filling left-out keys from the defaults."""
    fields: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _PHASE_KEYS:
            raise ConfigError(f"--phase={spec}: bad item {item!r} (keys: {', '.join(_PHASE_KEYS)})")
        fields[key] = value.strip()
    if "epochs" not in fields:
        raise ConfigError(f"--phase={spec}: needs epochs=N")
    try:
        plateau_v = _BOOL[fields["plateau"].lower()] if "plateau" in fields else plateau
        phase = Phase(
            epochs=int(fields["epochs"]),
            image_size=int(fields.get("size", image_size)),
            batch_size=int(fields.get("batch", batch_size)),
            augment=fields.get("aug", augment),
            plateau=plateau_v,
            min_lr=float(fields["min_lr"]) if "min_lr" in fields else None,
            max_lr=float(fields["max_lr"]) if "max_lr" in fields else None,
            step_epochs=float(fields["step_epochs"]) if "step_epochs" in fields else None,
            init=fields.get("init", "last"))
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--phase={spec}: {e}") from None
    return phase


def validate(cfg: RunConfig, *, recipe_names=None, model_names=None) -> None:
    """Raises :class:`ConfigError` with a one-line message for the first bad setting."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    need(bool(cfg.data), "--data is required (a build folder)")
    need(bool(cfg.out), "--out is required (the run's output folder)")
    need(cfg.phases, "no epochs to train: give --epochs >= 1 or at least one --phase")
    need(cfg.optimizer in OPTIMIZERS, f"--optimizer={cfg.optimizer}: one of {OPTIMIZERS}")
    need(cfg.lr_schedule in SCHEDULES, f"--lr_schedule={cfg.lr_schedule}: one of {SCHEDULES}")
    need(cfg.precision in PRECISIONS, f"--precision={cfg.precision}: one of {PRECISIONS}")
    need(cfg.strategy in STRATEGIES, f"--strategy={cfg.strategy}: one of {STRATEGIES}")
    need(cfg.cluster_timeout > 0, f"--cluster_timeout={cfg.cluster_timeout}: must be > 0")
    need(model_names is None or cfg.model in model_names,
         f"--model={cfg.model}: one of {tuple(model_names or ())}")
    need(cfg.width > 0, f"--width={cfg.width}: must be > 0")
    need(0 <= cfg.bn_momentum < 1, f"--bn_momentum={cfg.bn_momentum}: in [0, 1)")
    need(cfg.learning_rate > 0, f"--learning_rate={cfg.learning_rate}: must be > 0")
    need(cfg.epsilon > 0, f"--epsilon={cfg.epsilon}: must be > 0")
    need(cfg.steps_per_epoch >= 0, f"--steps_per_epoch={cfg.steps_per_epoch}: must be >= 0")
    need(8 <= cfg.val_image_size <= 512, f"--val_image_size={cfg.val_image_size}: 8..512")
    multiple = SIZE_MULTIPLE.get(cfg.model, 1)
    need(cfg.val_image_size % multiple == 0,
         f"--val_image_size={cfg.val_image_size}: --model={cfg.model} needs a multiple of "
         f"{multiple}")
    need(cfg.steps_per_call >= 1, f"--steps_per_call={cfg.steps_per_call}: must be >= 1")
    need(cfg.eval_batch_size >= 1, f"--eval_batch_size={cfg.eval_batch_size}: must be >= 1")
    need(0 < cfg.plateau_factor < 1, f"--plateau_factor={cfg.plateau_factor}: in (0, 1)")
    need(cfg.plateau_patience >= 0, f"--plateau_patience={cfg.plateau_patience}: >= 0")
    need(cfg.checkpoint_every >= 1, f"--checkpoint_every={cfg.checkpoint_every}: >= 1")
    need(cfg.keep_checkpoints >= 1, f"--keep_checkpoints={cfg.keep_checkpoints}: >= 1")
    need(0 <= cfg.seed < 2 ** 31, f"--seed={cfg.seed}: 0..2**31-1")
    need(cfg.misclassified >= 0, f"--misclassified={cfg.misclassified}: >= 0")
    need(not cfg.rmsprop_epsilon_outside_root or cfg.optimizer == "rmsprop",
         "--rmsprop_epsilon_outside_root needs --optimizer=rmsprop")
    for i, p in enumerate(cfg.phases, 1):
        where = f"phase {i}"
        need(p.init in PHASE_INITS, f"{where}: init={p.init} not one of {PHASE_INITS}")
        need(i > 1 or p.init == "last", f"{where}: init=best needs a previous phase")
        need(p.epochs >= 1, f"{where}: epochs={p.epochs} must be >= 1")
        need(8 <= p.image_size <= 512, f"{where}: image size {p.image_size} not in 8..512")
        need(p.image_size % multiple == 0,
             f"{where}: image size {p.image_size}: --model={cfg.model} needs a multiple of "
             f"{multiple} (--image_size or the phase's size=)")
        need(p.batch_size >= 1, f"{where}: batch size {p.batch_size} must be >= 1")
        need(recipe_names is None or p.augment in recipe_names,
             f"{where}: augmentation {p.augment!r} not one of {tuple(recipe_names or ())}")
        if cfg.lr_schedule == "triangular2":
            need(None not in (p.min_lr, p.max_lr, p.step_epochs),
                 f"{where}: --lr_schedule=triangular2 needs min_lr, max_lr, step_epochs")
            need(0 < p.min_lr <= p.max_lr, f"{where}: need 0 < min_lr <= max_lr")
            need(p.step_epochs > 0, f"{where}: step_epochs must be > 0")
            need(not p.plateau, f"{where}: plateau=on needs --lr_schedule=constant")


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
