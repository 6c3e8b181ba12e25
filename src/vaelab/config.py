"""A run's configuration: the common settings plus the model's own, presets, YAML files.

Each setting is declared once, as a field with its help and range (see
:mod:`vaelab.settings`): the common ones in :class:`Config`, a model's own in
its ``Settings`` class next to its code. config.json, the report, the flags
and their ``--help`` hold the common settings and that model's, nothing more.

Precedence: defaults < preset < config file < explicit flags. A preset's
fields that do not apply to the chosen model are left out (a preset is a
bundle); a config file's or flag's are refused, naming the model they belong to.

>>> config = resolve(preset="pyro-tutorial", overrides={"epochs": 5})
>>> config.z_dim, config.epochs        # z_dim is the VAE's own setting
(50, 5)
"""

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vaelab.data import DATASETS, NPZ_PREFIX
from vaelab.data.batches import BINARIZE, DataSpec
from vaelab.errors import CheckpointError, ConfigError, choices_error
from vaelab.models import MODELS
from vaelab.objectives import BACKENDS, BOUNDS, ELBOS, TORCH_ELBOS
from vaelab.settings import check_values, coerce, declared, field_type, plain, setting

# config.json files carry this; those without it were written by vaelab 0.1,
# whose flat config held every model's fields and a Pyro ELBO for torch runs.
# Version 3 added particles (and two-layer-vae, iwae-short, a torch run's elbo);
# version 4 the image models' net (and m2); version 5 tensorboard; version 6
# cuda_graph; version 7 AIR's z_pres_init; version 8 restarts, restart_epochs
# and start; version 9 hand_gradients; version 10 validation. Versions 2 to 9
# read as version 10 on one particle, an MLP, no TensorBoard, no CUDA graph,
# AIR's guide starting at sigmoid(3) = 0.9526, one start (the seed's own),
# autograd's gradients and no validation split, as they trained.
CONFIG_VERSION = 10
_VERSION_KEY = "config_version"


def _device_problem(value: str):
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        return f"must be auto, cpu or cuda[:N], got {value!r}"
    return None


def _seed_problem(value: int):
    return None if 0 <= value < 2**32 else f"must be in [0, 2^32), got {value}"


def run_seed(seed: int, start: int) -> int:
    """The training seed of start `start` of `seed`: `seed` itself for start 0, else spread over [0, 2^32)."""
    return (seed + start * 2_654_435_761) % 2**32  # an odd multiplier: distinct for starts 0-99 of a seed


def _betas_problem(value: tuple):
    if len(value) != 2 or not all(0 <= b < 1 for b in value):
        return f"must be two numbers in [0, 1), got {value}"
    return None


def _dataset_problem(value: str):
    if value not in DATASETS and not value.startswith(NPZ_PREFIX):
        raise choices_error("dataset", value, [*DATASETS, "npz:PATH"])
    return None


@dataclass
class Config:
    """Everything needed to rebuild a run's model and data; saved as config.json.

    The model's own settings are in `settings` (an instance of its ``Settings``);
    they read as attributes of the config too: ``config.z_dim``.
    """

    model: str = setting("vae", "model to train", choices=lambda: tuple(MODELS))
    backend: str = setting(
        "torch", "torch: the objective by hand; pyro: model/guide fitted by a Pyro ELBO", choices=BACKENDS
    )
    elbo: str | None = setting(
        None,
        "the objective: a Pyro ELBO (trace, meanfield, jit, jit-meanfield, mc, tracegraph, enum), or the "
        "importance-weighted bound iwae or dreg; by hand (backend torch): trace, meanfield, iwae, dreg "
        "(default: the model's own: Pyro's trace, or the closed-form KL by hand)",
        choices=ELBOS,
    )
    particles: int = setting(
        1,
        "samples z per image in the objective: the mean over them for the ELBOs (Pyro's num_particles, "
        "vectorised), the K of iwae and dreg",
        at_least=1,
        at_most=100_000,
    )
    dataset: str = setting(
        "mnist", "mnist, fashion-mnist, digits, multi-mnist, or npz:FILE", check=_dataset_problem
    )
    binarize: str = setting(
        "none", "none: pixels/255; dynamic: fresh draw per use; static: one draw", choices=BINARIZE
    )
    data_dir: str | None = setting(None, "a folder of idx files to read the dataset from")
    epochs: int = setting(10, "total epochs; with --resume, train up to this many", at_least=1, at_most=10**7)
    batch_size: int = setting(128, "images per step", at_least=1, at_most=10**6)
    lr: float = setting(1e-3, "Adam's learning rate (the first, under a schedule)", positive=True)
    clip_grad: float | None = setting(None, "clip the gradients' global norm to this", positive=True)
    lr_schedule: str = setting(
        "constant",
        "constant; iwae: 3^i epochs at lr·10^(-i/7), i = 0…7 (Burda et al., 3,280 epochs); "
        "iwae-short: the same rates for 1,1,1,1,1,3,9,27 epochs (44: the stages over 81, at least 1)",
        choices=("constant", "iwae", "iwae-short"),
    )
    adam_betas: tuple[float, float] = setting((0.9, 0.999), "Adam's betas", check=_betas_problem)
    adam_eps: float = setting(1e-8, "Adam's epsilon", positive=True)
    seed: int = setting(0, "seeds Python, NumPy, torch and Pyro, and the data order", check=_seed_problem)
    restarts: int = setting(
        1,
        "train this many starts of the seed for --restart-epochs epochs each, then continue the one whose "
        "last epoch's training objective is highest (RUN/starts/, RUN/starts.json); 1: the seed alone",
        at_least=1,
        at_most=100,
    )
    restart_epochs: int = setting(
        3, "epochs each of --restarts' starts trains before the best goes on", at_least=1, at_most=10**7
    )
    start: int = setting(
        0,
        "which start of the seed this run is (its training draws from its own seed; 0: the seed itself); "
        "--restarts sets it to the start chosen",
        at_least=0,
        at_most=99,
    )
    validation: int = setting(
        0,
        "hold out the training split's last N images, never trained on; their ELBO (val_elbo) and the "
        "model's scores (val_...) are logged each epoch, for choices made without the test set, such as "
        "early stopping",
        at_least=0,
        at_most=10**9,
    )
    eval_batch_size: int = setting(1000, "batch size for the per-epoch test ELBO", at_least=1, at_most=10**6)
    log_interval: int = setting(
        50, "steps between reads of the running loss to the host", at_least=1, at_most=10**9
    )
    device: str = setting("auto", "auto (CUDA when available), cpu or cuda[:N]", check=_device_problem)
    tensorboard: bool = setting(
        False, "write RUN/tensorboard/ for TensorBoard: curves, scores and pictures per epoch"
    )
    cuda_graph: bool = setting(
        False,
        "on a CUDA device, record each training step (loss, backward, Adam) once as a CUDA graph and "
        "replay it: far fewer launches at small batches (torch backend, one process)",
    )
    hand_gradients: bool = setting(
        False,
        "the step of the MLP vae, beta-vae, cvae or two-layer-vae (torch backend, any of its "
        "objectives) with its gradients written by hand and Adam's fused kernel called directly: no "
        "autograd, the same run to float rounding, faster at small batches",
    )
    settings: object = field(default=None, repr=True)  # the model's Settings

    def __getattr__(self, name):
        # Only reached for names that are not common fields: the model's own settings.
        settings = self.__dict__.get("settings")
        if settings is not None and name in declared(type(settings)):
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__} of model {self.__dict__.get('model')!r} has no {name!r}")

    @property
    def run_seed(self) -> int:
        """The seed of this run's training draws (initial weights, noise, batch order): `seed` for
        start 0, for start i another fixed function of (seed, i). The data (static binarisation,
        M2's labelled images) and the evaluation's draws stay `seed`'s, shared by the starts."""
        return run_seed(self.seed, self.start)

    @property
    def model_class(self):
        return MODELS[self.model]

    def model_args(self, data: DataSpec) -> dict:
        """Returns the keyword arguments that build this run's model for `data` (shape, classes)."""
        return self.model_class.arguments(self.settings, data)

    def to_dict(self) -> dict:
        """Returns the common settings and the model's as plain JSON-ready data.

        A run on its backend's default objective (the torch backend's own) records no elbo.
        """
        values = {name: plain(getattr(self, name)) for name in COMMON}
        if self.elbo is None:
            del values["elbo"]
        values.update({name: plain(getattr(self.settings, name)) for name in declared(type(self.settings))})
        return values


COMMON = {name: f for name, f in declared(Config).items() if name != "settings"}


@functools.cache
def model_fields() -> dict:
    """Returns {field name: [model names]} over every model's own settings."""
    owners = {}
    for name in MODELS:
        for key in declared(MODELS[name].Settings):
            owners.setdefault(key, []).append(name)
    return owners


def field_hint(name: str):
    """Returns the type of setting `name`: a common one, or the first model's that declares it."""
    if name in COMMON:
        return field_type(Config, name)
    return field_type(MODELS[model_fields()[name][0]].Settings, name)


# Burda et al. (2015), one stochastic layer: 784-200-200-50 tanh, dynamic
# binarisation, Adam(0.9, 0.999, eps 1e-4), batch 20, 3^i epochs at
# 1e-3·10^(-i/7) for i = 0…7 (3,280 epochs). Their Table 1: test NLL 86.76 (k=5000).
# The burda-* presets are its cells: two layers take the two-layer-vae's defaults
# (200-200 to z1 100, 100-100 to z2 50, the authors' code's widths) and drop the one-layer network's settings.
_BURDA = dict(
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
)

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
    "iwae-paper": dict(_BURDA),  # Burda et al.'s one-layer VAE, as burda-1layer-vae-k1 by default ELBO
    **{
        f"burda-{layers}layer-{kind}-k{k}": dict(
            _BURDA,
            model="vae" if layers == 1 else "two-layer-vae",
            elbo=kind if kind == "iwae" else "trace",
            particles=k,
        )
        for layers in (1, 2)
        for kind in ("vae", "iwae")
        for k in (1, 5, 50)
    },
    # Semi-supervised M2 as Pyro's ss_vae_M2 example: 784-500-50 softplus, batch 200, Adam
    # 4.2e-4, auxiliary loss α = 46, 100 labels, 50 epochs (its table: 0.9319 test accuracy).
    "m2-pyro": dict(
        model="m2",
        dataset="mnist",
        binarize="none",
        z_dim=50,
        hidden=(500,),
        activation="softplus",
        labelled=100,
        aux_weight=46.0,
        batch_size=200,
        lr=4.2e-4,
        epochs=50,
    ),
    # Pyro's CVAE example: complete a digit from 1, 2 or 3 quadrants; networks 500-500, latent 200,
    # batch 128, Adam 1e-3; the baseline's epochs first, then the CVAE's (Pyro stops each early).
    **{
        f"pyro-cvae-q{q}": dict(
            model="cvae-completion",
            dataset="mnist",
            binarize="none",
            quadrants=q,
            z_dim=200,
            hidden=(500, 500),
            baseline_epochs=10,
            batch_size=128,
            lr=1e-3,
            epochs=30,
        )
        for q in (1, 2, 3)
    },
    # Attend-Infer-Repeat on Multi-MNIST (Eslami et al., 2016), trained from
    # these defaults by the hand-written surrogate or Pyro's TraceGraph_ELBO.
    # Best of three starts by the train ELBO after 3 epochs: one start alone
    # succeeded (count accuracy >= 0.95) from 2 of 5 seeds with each backend,
    # the failures stuck in lower-ELBO optima from their first epochs
    # (benchmarks/results, "AIR: best of three starts").
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
        restarts=3,
        restart_epochs=3,
    ),
}

# Burda et al. (2015), section 5: stage i lasts 3^i epochs at lr·10^(-i/7), i = 0…7.
IWAE_STAGES = 8
STAGE_EPOCHS = {
    "iwae": [3**i for i in range(IWAE_STAGES)],
    # The paper's stages over 81 (at least one epoch each): its rates in 44 epochs, for a CPU.
    "iwae-short": [max(1, 3**i // 81) for i in range(IWAE_STAGES)],
}


def learning_rate(config: "Config", epoch: int) -> float:
    """Returns the learning rate of `epoch` (counted from 1) under the config's schedule."""
    if config.lr_schedule == "constant":
        return config.lr
    stage, last_epoch_of_stage = 0, STAGE_EPOCHS[config.lr_schedule][0]
    while epoch > last_epoch_of_stage and stage < IWAE_STAGES - 1:
        stage += 1
        last_epoch_of_stage += STAGE_EPOCHS[config.lr_schedule][stage]
    return config.lr * 10 ** (-stage / 7)


def from_mapping(values: dict, source: str) -> dict:
    """Returns `values` checked against every known setting and coerced to its type.

    Whether each applies to the chosen model is checked once the model is known.
    """
    # YAML keys need not be strings ("?" alone is {None: None}; "1: 2" has an int key).
    known = {**COMMON, **model_fields()}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    return {k: coerce(field_hint(k), k, v, source) for k, v in values.items()}


# A config file is a few dozen lines; anything far larger is not one (and /dev/zero never ends).
MAX_CONFIG_BYTES = 1 << 20


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases (*name): a config has no use for them, and nested ones expand exponentially."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            raise _AliasFound(self.peek_event().start_mark)
        return super().compose_node(parent, index)


class _AliasFound(Exception):
    def __init__(self, mark):
        self.mark = mark


def load_yaml(path) -> dict:
    """Returns the fields set in the YAML config file at `path`, checked; any content gets one line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    try:
        values = yaml.load(raw.decode(), Loader=_NoAliases)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not text (not UTF-8); a config file is YAML") from None
    except _AliasFound as e:
        raise ConfigError(
            f"{path}: YAML aliases (*name) are not taken in a config file, at line {e.mark.line + 1}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep for a config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value")
    return from_mapping(values, str(path))


def build(values: dict, sources: dict | None = None) -> Config:
    """Returns the validated Config of `values` (coerced), each key from `sources[key]`.

    A key from a preset (source "preset ...") that the model does not have is
    left out; from anywhere else it is refused, naming the models it belongs to.
    """
    sources = sources or {}
    model = values.get("model", "vae")
    if model not in MODELS:
        raise _with_source(choices_error("model", model, tuple(MODELS)), sources.get("model"))
    own = declared(MODELS[model].Settings)
    common, settings = {}, {}
    for key, value in values.items():
        source = sources.get(key, "command line")
        if key in COMMON:
            common[key] = value
        elif key in own:
            settings[key] = value
        elif not source.startswith("preset"):
            owners = ", ".join(model_fields()[key])
            raise ConfigError(f"{source}: {key} is a setting of model {owners}, not of {model}")
    if common.get("backend", "torch") == "torch" and common.get("elbo") not in (None, *TORCH_ELBOS):
        if not sources.get("elbo", "").startswith("preset"):
            raise ConfigError(
                f"{sources.get('elbo', 'command line')}: elbo {common['elbo']} is Pyro's own; backend torch "
                f"writes {', '.join(TORCH_ELBOS)} by hand"
            )
        del common["elbo"]
    config = Config(**common, settings=MODELS[model].Settings(**settings))
    try:
        return validate(config)
    except ConfigError as e:  # a value out of range: named with the file it came from
        raise _with_source(e, sources.get(getattr(e, "field", None))) from None


def _with_source(error: ConfigError, source) -> ConfigError:
    """Returns `error` prefixed with `source` if it names a place (a file, the sweep)."""
    if source is None or source == "command line" or source.startswith("preset"):
        return error
    return ConfigError(f"{source}: {error}")


def validate(config: Config) -> Config:
    """Returns `config` if every field is a valid choice and in range; else raises."""
    check_values(config)
    check_values(config.settings)
    model = config.model_class
    if config.elbo in BOUNDS and not model.trains_on_bounds:
        why = "has discrete latents" if model.discrete_latents else "does not train on them"
        raise ConfigError(f"--elbo {config.elbo}: an importance-weighted bound; model {config.model} {why}")
    if config.particles > 1 and not model.vectorised_particles:
        raise ConfigError(f"--particles {config.particles}: model {config.model} takes one particle")
    if config.elbo in ("meanfield", "jit-meanfield") and not model.mean_field_guide:
        raise ConfigError(
            f"--elbo {config.elbo}: model {config.model}'s guide is not mean-field (its latents depend on "
            "each other); use trace"
        )
    if config.backend == "torch" and config.elbo == "meanfield" and model.mean_field_guide:
        config.elbo = None  # the torch backend's default, recorded one way: --resume agrees either way
    if config.backend == "torch" and config.elbo is not None and model.discrete_latents:
        raise ConfigError(
            f"--elbo {config.elbo}: model {config.model} writes its own objective by hand for backend torch"
        )
    if config.backend == "pyro":
        if config.elbo is None:
            config.elbo = model.default_elbo
        if model.pyro_elbos and config.elbo not in model.pyro_elbos:
            raise ConfigError(
                f"model {config.model}'s Pyro program needs --elbo {' or '.join(model.pyro_elbos)}, "
                f"got {config.elbo!r}"
            )
        if model.discrete_latents and config.elbo != "tracegraph":
            raise ConfigError(
                f"model {config.model} has discrete latents: backend pyro needs --elbo tracegraph, "
                f"got {config.elbo!r}"
            )
    if config.elbo == "tracegraph" and config.particles > 1:
        raise ConfigError(f"--particles {config.particles}: elbo tracegraph takes one particle here")
    model.check_config(config)
    return config


def resolve(preset=None, config_file=None, overrides=None) -> Config:
    """Returns the Config from defaults, then `preset`, then `config_file`, then `overrides`."""
    values, sources = {}, {}
    layers = []
    if preset is not None:
        if preset not in PRESETS:
            raise choices_error("preset", preset, sorted(PRESETS))
        layers.append((from_mapping(PRESETS[preset], f"preset {preset}"), f"preset {preset}"))
    if config_file is not None:
        layers.append((load_yaml(config_file), str(config_file)))
    layers.append((from_mapping(overrides or {}, "command line"), "command line"))
    for layer, source in layers:
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    check_data_dir(values.get("data_dir"), sources.get("data_dir"))
    return build(values, sources)


def _is_folder(path: str) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):  # a name no file system holds (a NUL byte)
        return False


def check_data_dir(data_dir, source=None) -> None:
    """Raises ConfigError if a --data-dir given for a new run is not a folder (a typo would be ignored)."""
    if data_dir is not None and not _is_folder(data_dir):
        where = "--data-dir" if source in (None, "command line") else f"{source}: data_dir"
        raise ConfigError(f"{where} {data_dir}: no such folder")


def from_json(values: dict, source: str) -> Config:
    """Returns the Config saved in a run's config.json (a full mapping of this version)."""
    return build(from_mapping(values, source), dict.fromkeys(values, source))


def _from_version_1(values: dict) -> dict:
    """Returns a vaelab 0.1 config.json's values as this version writes them.

    Version 1 held every model's fields in one flat mapping and a Pyro ELBO
    for torch runs: the fields of other models, and that ELBO, are dropped
    (as is any key this version does not know: version 1 wrote none).
    """
    model = values.get("model", "vae")
    own = declared(MODELS[model].Settings) if model in MODELS else {}
    kept = {k: v for k, v in values.items() if k in COMMON or k in own}
    if kept.get("backend") == "torch":
        kept.pop("elbo", None)
    return kept


def read_run_config(run_dir) -> Config:
    """Returns the Config saved in RUN/config.json; raises CheckpointError naming the file."""
    path = Path(run_dir) / "config.json"
    try:
        values = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {run_dir} is not a run directory") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not text (not UTF-8)") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({getattr(e, 'msg', 'nested too deep')})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: not a vaelab config (not a mapping)")
    missing = [key for key in ("model", "dataset") if key not in values]
    if missing:
        raise CheckpointError(f"{path}: not a whole vaelab config (no {', '.join(missing)})")
    version = values.pop(_VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: {_VERSION_KEY} must be an integer, got {version!r}")
    if version == 1:
        values = _from_version_1(values)
    elif version not in (2, 3, 4, 5, 6, 7, 8, 9, CONFIG_VERSION):  # the defaults fill what versions 2-9 lack
        raise CheckpointError(
            f"{path}: written by a newer vaelab (config version {version}, this one reads up to "
            f"{CONFIG_VERSION}); upgrade vaelab"
        )
    return from_json(values, str(path))


def run_config_json(config: Config) -> dict:
    """Returns what a run directory's config.json holds: the settings and their version."""
    return {**config.to_dict(), _VERSION_KEY: CONFIG_VERSION}


__all__ = ["COMMON", "PRESETS", "Config", "learning_rate", "resolve"]
