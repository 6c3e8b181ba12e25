"""A run's configuration: one dataclass, presets, YAML files and their validation.

Precedence: dataclass defaults < preset < config file < explicit flags.

>>> config = resolve(preset="pyro-tutorial", overrides={"epochs": 5})
>>> config.z_dim, config.epochs
(50, 5)
"""

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from vaelab.data import DATASETS, NPZ_PREFIX
from vaelab.data.batches import BINARIZE
from vaelab.errors import CheckpointError, ConfigError, choices_error
from vaelab.models import MODELS
from vaelab.nets import ACTIVATIONS
from vaelab.objectives import BACKENDS, ELBOS


@dataclass
class Config:
    """Everything needed to rebuild a run's model and data; saved as config.json."""

    model: str = "vae"
    backend: str = "torch"  # torch: the ELBO by hand; pyro: model/guide + a Pyro ELBO
    elbo: str = "trace"  # which Pyro ELBO, for backend pyro: trace, meanfield, jit, jit-meanfield, mc
    dataset: str = "mnist"
    binarize: str = "none"  # none: pixels/255; dynamic: fresh draw per use; static: one draw
    data_dir: str | None = None  # a folder of idx files to read the dataset from
    epochs: int = 10  # total epochs; --resume continues up to this many
    batch_size: int = 128
    lr: float = 1e-3  # Adam's learning rate (the first, under a schedule)
    clip_grad: float | None = None  # clip the gradients' global norm to this, if set
    lr_schedule: str = "constant"  # constant, or iwae: 3^i epochs at lr·10^(-i/7) (Burda et al.)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    z_dim: int = 20  # latent size
    hidden: tuple[int, ...] = (400,)  # encoder widths; the decoder mirrors them
    activation: str = "relu"
    seed: int = 0  # seeds Python, NumPy, torch and Pyro, and the data order
    eval_batch_size: int = 1000  # batch size for the per-epoch test ELBO
    log_interval: int = 50  # steps between reads of the running loss to the host
    device: str = "auto"  # auto: CUDA when available, else CPU
    # Attend-Infer-Repeat (model air); z_dim is the size of each object's z_what.
    max_steps: int = 3  # most objects per image
    z_pres_prior: float = 0.01  # prior probability of each further object
    z_pres_prior_start: float | None = None  # if set, anneal the prior from this to z_pres_prior
    anneal_epochs: int = 10  # epochs of that annealing (geometric in the probability)
    scale_prior_mean: float = 2.5  # window side = image side / scale: 20 of 50 pixels
    scale_prior_sd: float = 0.1
    decoder_output_bias: float = -2.0  # added before the glimpse decoder's sigmoid
    likelihood_sd: float = 0.3  # pixels ~ Normal(canvas, likelihood_sd)
    baseline_lr: float = 1e-3  # Adam's learning rate for the z_pres baselines

    def model_args(self, x_dim: int) -> dict:
        """Returns the keyword arguments that build this run's model for `x_dim` pixels."""
        if self.model == "air":
            return {
                "x_dim": x_dim,
                "max_steps": self.max_steps,
                "z_what_dim": self.z_dim,
                "z_pres_prior": self.z_pres_prior,
                "scale_prior_mean": self.scale_prior_mean,
                "scale_prior_sd": self.scale_prior_sd,
                "decoder_output_bias": self.decoder_output_bias,
                "likelihood_sd": self.likelihood_sd,
            }
        return {
            "x_dim": x_dim,
            "z_dim": self.z_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    def to_dict(self) -> dict:
        """Returns the config as plain JSON-ready data."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS = {
    # pytorch/examples' VAE (seed 004): 784-400-20, ReLU, batch 128, Adam 1e-3, 10 epochs.
    "pytorch-examples": dict(
        dataset="mnist",
        binarize="none",
        z_dim=20,
        hidden=(400,),
        activation="relu",
        batch_size=128,
        lr=1e-3,
        epochs=10,
    ),
    # Pyro's VAE tutorial: 784-400-50, softplus, batch 256, Adam 1e-3, 100 epochs.
    "pyro-tutorial": dict(
        dataset="mnist",
        binarize="none",
        z_dim=50,
        hidden=(400,),
        activation="softplus",
        batch_size=256,
        lr=1e-3,
        epochs=100,
    ),
    # Burda et al. (2015), one stochastic layer: 784-200-200-50 tanh, dynamic
    # binarisation, Adam(0.9, 0.999, eps 1e-4), batch 20, 3^i epochs at
    # 1e-3·10^(-i/7) for i = 0…7 (3,280 epochs). Their Table 1: test NLL 86.76 (k=5000).
    "iwae-paper": dict(
        dataset="mnist",
        binarize="dynamic",
        z_dim=50,
        hidden=(200, 200),
        activation="tanh",
        batch_size=20,
        lr=1e-3,
        lr_schedule="iwae",
        adam_betas=(0.9, 0.999),
        adam_eps=1e-4,
        epochs=sum(3**i for i in range(8)),
    ),
    # Attend-Infer-Repeat on Multi-MNIST (Eslami et al., 2016), trained from
    # these defaults by the hand-written surrogate or Pyro's TraceGraph_ELBO.
    "air": dict(
        model="air",
        dataset="multi-mnist",
        binarize="none",
        elbo="tracegraph",
        z_dim=50,
        batch_size=64,
        lr=1e-3,
        baseline_lr=1e-3,
        epochs=30,
        eval_batch_size=500,
    ),
}

# Burda et al. (2015), section 5: stage i lasts 3^i epochs at lr·10^(-i/7), i = 0…7.
IWAE_STAGES = 8


def learning_rate(config: "Config", epoch: int) -> float:
    """Returns the learning rate of `epoch` (counted from 1) under the config's schedule."""
    if config.lr_schedule == "constant":
        return config.lr
    stage, last_epoch_of_stage = 0, 1
    while epoch > last_epoch_of_stage and stage < IWAE_STAGES - 1:
        stage += 1
        last_epoch_of_stage += 3**stage
    return config.lr * 10 ** (-stage / 7)


_CHOICES = {
    "model": tuple(MODELS),
    "backend": BACKENDS,
    "elbo": ELBOS,
    "binarize": BINARIZE,
    "activation": tuple(ACTIVATIONS),
    "lr_schedule": ("constant", "iwae"),
}
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def _coerce(key: str, value, source: str):
    """Returns `value` as the type of field `key`; raises ConfigError naming both."""
    hint = _TYPES[key]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        item = args[0]
        return tuple(_scalar(key, v, item, source) for v in value)
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    return _scalar(key, value, hint, source)


def _scalar(key, value, hint, source):
    name = hint.__name__
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key} must be {name}, got {value!r}")


def from_mapping(values: dict, source: str) -> dict:
    """Returns `values` checked against Config's fields and coerced to their types."""
    # YAML keys need not be strings ("?" alone is {None: None}; "1: 2" has an int key).
    unknown = sorted(str(k) for k in values if k not in _FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    return {k: _coerce(k, v, source) for k, v in values.items()}


def load_yaml(path) -> dict:
    """Returns the fields set in the YAML config file at `path`, checked."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value")
    return from_mapping(values, str(path))


def validate(config: Config) -> Config:
    """Returns `config` if every field is a valid choice and in range; else raises."""
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise choices_error(key, getattr(config, key), choices)
    if config.dataset not in DATASETS and not config.dataset.startswith(NPZ_PREFIX):
        raise choices_error("dataset", config.dataset, [*DATASETS, "npz:PATH"])
    positive = ["epochs", "batch_size", "z_dim", "eval_batch_size", "log_interval"]
    for key in positive:
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(config, key)}")
    for key in ("lr", "baseline_lr", "scale_prior_sd", "likelihood_sd"):
        if not getattr(config, key) > 0:
            raise ConfigError(f"{key} must be positive, got {getattr(config, key)}")
    for key in ("z_pres_prior", "z_pres_prior_start"):
        value = getattr(config, key)
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{key} must be a probability in (0, 1), got {value}")
    if config.model == "air":
        if config.backend == "pyro" and config.elbo != "tracegraph":
            raise ConfigError(
                f"model air has discrete latents: backend pyro needs --elbo tracegraph, got {config.elbo!r}"
            )
        if config.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {config.max_steps}")
        if config.anneal_epochs < 1:
            raise ConfigError(f"anneal_epochs must be at least 1, got {config.anneal_epochs}")
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2^32), got {config.seed}")
    if config.clip_grad is not None and not config.clip_grad > 0:
        raise ConfigError(f"clip_grad must be positive, got {config.clip_grad}")
    if not config.adam_eps > 0:
        raise ConfigError(f"adam_eps must be positive, got {config.adam_eps}")
    if len(config.adam_betas) != 2 or not all(0 <= b < 1 for b in config.adam_betas):
        raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {config.adam_betas}")
    if not config.hidden or any(h < 1 for h in config.hidden):
        raise ConfigError(f"hidden must be one or more positive widths, got {config.hidden}")
    if config.device not in ("auto", "cpu") and not config.device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {config.device!r}")
    return config


def resolve(preset=None, config_file=None, overrides=None) -> Config:
    """Returns the Config from defaults, then `preset`, then `config_file`, then `overrides`."""
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise choices_error("preset", preset, sorted(PRESETS))
        values.update(PRESETS[preset])
    if config_file is not None:
        values.update(load_yaml(config_file))
    values.update(from_mapping(overrides or {}, "command line"))
    return validate(Config(**values))


def from_json(values: dict, source: str) -> Config:
    """Returns the Config saved in a run's config.json (already a full mapping)."""
    return validate(Config(**from_mapping(values, source)))


def read_run_config(run_dir) -> Config:
    """Returns the Config saved in RUN/config.json; raises CheckpointError naming the file."""
    path = Path(run_dir) / "config.json"
    try:
        return from_json(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {run_dir} is not a run directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg})") from None
