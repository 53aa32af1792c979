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

# Keys that change nothing about the trained result: a resumed run may differ in these.
RUNTIME_ONLY = ("stop_after_epoch", "progress", "make_synthetic_data", "steps_per_call",
                "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                "cluster_timeout")


def setting(default: Any, help: str, *, runtime_only: bool = False) -> Any:
    """A :class:`RunConfig` field declared once: its default, its flag's help text, and whether
    it changes the trained result (``runtime_only`` settings may differ on resume)."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "runtime_only": runtime_only})


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

    @property
    def signature(self) -> tuple:
        """What a compiled train step depends on: a new one is traced per distinct value."""
        return (self.image_size, self.batch_size, self.augment)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run depends on. ``training.run(config)`` reads nothing else."""

    data: str
    out: str
    model: str = "net2"
    width: float = 1.0
    phases: tuple[Phase, ...] = ()
    batch_size: int = 128
    steps_per_epoch: int = 0          # 0: ceil(train examples / batch) of each phase
    steps_per_call: int = 1           # train steps per tf.function call (less Python overhead)
    bn_momentum: float = 0.0          # 0: the model's own (Keras 0.99); lower for short runs
    val_image_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epsilon: float = 1e-7
    lr_schedule: str = "constant"
    plateau_factor: float = math.sqrt(0.1)
    plateau_patience: int = 5
    plateau_min_lr: float = 5e-7
    precision: str = "float32"
    xla: bool = True
    strategy: str = "auto"
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    misclassified: int = 36
    worst_classes: int = 10
    make_synthetic_data: bool = False
    progress: bool = True
    stop_after_epoch: int = 0         # test hook: os._exit(3) after this epoch's checkpoint
    cluster_timeout: float = setting(
        300.0, "multi-worker: seconds to wait for every worker of TF_CONFIG to join (and for "
        "a silent worker before the others give up)", runtime_only=True)

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
        for k in RUNTIME_ONLY:
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
_PHASE_KEYS = ("epochs", "size", "batch", "aug", "plateau", "min_lr", "max_lr", "step_epochs")


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
            step_epochs=float(fields["step_epochs"]) if "step_epochs" in fields else None)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--phase={spec}: {e}") from None
    return phase


def validate(cfg: RunConfig, *, recipe_names=None, model_names=None) -> None:
    """Raises :class:`ConfigError` with a one-line message for the first bad setting."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    need(cfg.phases, "no epochs to train: give --epochs >= 1 or at least one --phase")
    need(cfg.optimizer in OPTIMIZERS, f"--optimizer={cfg.optimizer}: one of {OPTIMIZERS}")
    need(cfg.lr_schedule in SCHEDULES, f"--lr_schedule={cfg.lr_schedule}: one of {SCHEDULES}")
    need(cfg.precision in PRECISIONS, f"--precision={cfg.precision}: one of {PRECISIONS}")
    need(cfg.strategy in STRATEGIES, f"--strategy={cfg.strategy}: one of {STRATEGIES}")
    need(model_names is None or cfg.model in model_names,
         f"--model={cfg.model}: one of {tuple(model_names or ())}")
    need(cfg.width > 0, f"--width={cfg.width}: must be > 0")
    need(0 <= cfg.bn_momentum < 1, f"--bn_momentum={cfg.bn_momentum}: in [0, 1)")
    need(cfg.learning_rate > 0, f"--learning_rate={cfg.learning_rate}: must be > 0")
    need(cfg.epsilon > 0, f"--epsilon={cfg.epsilon}: must be > 0")
    need(cfg.steps_per_epoch >= 0, f"--steps_per_epoch={cfg.steps_per_epoch}: must be >= 0")
    need(8 <= cfg.val_image_size <= 512, f"--val_image_size={cfg.val_image_size}: 8..512")
    need(cfg.steps_per_call >= 1, f"--steps_per_call={cfg.steps_per_call}: must be >= 1")
    need(cfg.eval_batch_size >= 1, f"--eval_batch_size={cfg.eval_batch_size}: must be >= 1")
    need(0 < cfg.plateau_factor < 1, f"--plateau_factor={cfg.plateau_factor}: in (0, 1)")
    need(cfg.plateau_patience >= 0, f"--plateau_patience={cfg.plateau_patience}: >= 0")
    need(cfg.checkpoint_every >= 1, f"--checkpoint_every={cfg.checkpoint_every}: >= 1")
    need(cfg.keep_checkpoints >= 1, f"--keep_checkpoints={cfg.keep_checkpoints}: >= 1")
    need(0 <= cfg.seed < 2 ** 31, f"--seed={cfg.seed}: 0..2**31-1")
    need(cfg.cluster_timeout > 0, f"--cluster_timeout={cfg.cluster_timeout}: must be > 0")
    need(cfg.misclassified >= 0, f"--misclassified={cfg.misclassified}: >= 0")
    for i, p in enumerate(cfg.phases, 1):
        where = f"phase {i}"
        need(p.epochs >= 1, f"{where}: epochs={p.epochs} must be >= 1")
        need(8 <= p.image_size <= 512, f"{where}: image size {p.image_size} not in 8..512")
        need(p.batch_size >= 1, f"{where}: batch size {p.batch_size} must be >= 1")
        need(recipe_names is None or p.augment in recipe_names,
             f"{where}: augmentation {p.augment!r} not one of {tuple(recipe_names or ())}")
        if cfg.lr_schedule == "triangular2":
            need(None not in (p.min_lr, p.max_lr, p.step_epochs),
                 f"{where}: --lr_schedule=triangular2 needs min_lr, max_lr, step_epochs")
            need(0 < p.min_lr <= p.max_lr, f"{where}: need 0 < min_lr <= max_lr")
            need(p.step_epochs > 0, f"{where}: step_epochs must be > 0")
            need(not p.plateau, f"{where}: plateau=on needs --lr_schedule=constant")
