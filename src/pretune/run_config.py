"""A run's configuration and what it builds: the task, the checked options, the method (after the
prompt search where the prompt is left to it), and the configuration read back from a run folder.

Everything the user can get wrong is checked here, before a model loads.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .backbones import DEFAULT_MODEL, Backbone, load_backbone
from .data import Columns, Task, few_shot_task
from .errors import UserError
from .methods import Method, build_methods, make_config, method_spec
from .methods.autoprompt import searched, wants_search
from .precision import Precision, check_dtype, resolve_precision
from .sources import in_memory, kind_of, load_any_task
from .training import recipes
from .training.engine import check_launch
from .training.recipes import PatternEnsemble
from .training.trainer import TrainConfig, resolve_device, set_seed
from .tuning import BodyTraining
from .validation import check_fields, check_numbers

log = logging.getLogger("pretune")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as the run folder's config.yaml. The task is a name or
    a path, or data in memory (a DataFrame, a datasets.Dataset or DatasetDict, a list of dicts: see
    `sources`), which config.yaml records by kind, size and hash."""

    task: object
    model: str = DEFAULT_MODEL
    method: str = "head"
    method_options: dict = field(default_factory=dict)
    train: str | None = None  # body training: frozen | full | bitfit | lora | last:N; None: the method's default
    lora_r: int = 8
    lora_alpha: int = 16
    split_seed: int | None = None  # which K-<seed> split of a few-shot task folder
    shots: int | None = None  # sample K per class (LM-BFF protocol) from a full dataset
    text_field: str = "text"
    pair_field: str | None = "text_pair"
    label_field: str = "label"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: the number format of the forward passes
    test_sample: int | None = None  # evaluate on a fixed random sample of this many test examples (the same for every run)
    training: TrainConfig = field(default_factory=TrainConfig)

    def body_training(self) -> BodyTraining:
        spec = self.train or method_spec(self.method).default_training
        return BodyTraining.parse(spec, lora_r=self.lora_r, lora_alpha=self.lora_alpha)

    def to_dict(self) -> dict:
        # In-memory data is named, never copied (asdict would deep-copy a DataFrame).
        task = f"<in-memory {kind_of(self.task)}>" if in_memory(self.task) else str(self.task)
        data = asdict(replace(self, task=task))
        data["train"] = str(self.body_training())
        return data

    def precision(self) -> Precision:
        """The concrete number format of this run on the device it runs on (`auto` decided here)."""
        return resolve_precision(self.dtype, resolve_device(self.training.device))


Tuned = Method | PatternEnsemble  # what a run trains and predicts with


# ---------------------------------------------------------------- building blocks


def prepare_task(config: RunConfig) -> Task:
    """Read and check the data (before any model loads); apply K-shot sampling if asked."""
    check_numbers({name: getattr(config, name) for name in ("lora_r", "lora_alpha", "split_seed", "shots", "test_sample")})
    config.training.validate()
    resolve_device(config.training.device)  # a device this machine lacks: refused before any model loads
    check_launch()
    columns = Columns(config.text_field, config.pair_field, config.label_field)
    task = load_any_task(config.task, split_seed=config.split_seed, columns=columns)
    if config.shots is not None:
        if config.shots < 1:
            raise UserError(f"--shots must be at least 1, got {config.shots}")
        task = few_shot_task(task, config.shots, config.split_seed if config.split_seed is not None else 42)
    if config.test_sample is not None:
        task = _with_test_sample(task, config.test_sample)
    return task


TEST_SAMPLE_SEED = 0  # fixed, not the run's seed: every run and arm of a task sees the same sample


def _with_test_sample(task: Task, size: int) -> Task:
    """The task with a fixed random sample of `size` test examples, in their original order (the whole
    test set when it is not larger)."""
    if size < 1:
        raise UserError(f"the test sample size must be at least 1, got {size}")
    if len(task.test) <= size:
        return task
    chosen = sorted(random.Random(TEST_SAMPLE_SEED).sample(range(len(task.test)), size))
    source = f"{task.source} (test: a fixed sample of {size} of {len(task.test)})"
    return replace(task, test=[task.test[i] for i in chosen], source=source)


def validate(config: RunConfig, task: Task):
    """All configuration checks that need no model: method options, body training, training options."""
    method_config = make_config(config.method, dict(config.method_options), task=task)
    training = config.body_training()
    config.training.validate()
    check_dtype(config.dtype)
    if config.training.lr is not None and method_config.default_rates(training).own is None:
        raise UserError(f"--lr sets the rate of a method's own parameters (head, prompt); --method {config.method} "
                        "adds none: set the body's rate with --body-lr")
    return method_config, training


def build_method(config: RunConfig, task: Task, backbone: Backbone | None = None) -> Tuned:
    """The run's method, or the ensemble of its members (a pattern ensemble), built from the seed."""
    method_config, training = validate(config, task)
    precision = config.precision()
    backbone = backbone or load_backbone(config.model)
    method_spec(config.method).check_backbone(backbone)
    set_seed(config.training.seed)  # new parameters (head, prompt encoder) start from the seed too
    methods = build_methods(config.method, backbone, task, method_config, training)
    for method in methods:  # an ensemble's members share the body: the second finds it prepared
        method.use_precision(precision)
    log.info("%s", precision.describe())
    return recipes.tuned(methods)


def chosen_prompt(search) -> dict:
    """What the prompt search chose, for a run's summary (the whole search is in prompt_search.json)."""
    return {"patterns": search.patterns, "verbalizer": search.verbalizer, "calibrate": search.calibrate,
            "why": search.reason}


PROMPT_SEARCH = "prompt_search.json"


def search_prompt(config: RunConfig, task: Task, method_config, backbone: Backbone | None, progress: bool = True):
    """(config, backbone, search result): a prompt left to the search (`--pattern auto`,
    `--verbalizer auto`, a task without a built-in prompt) replaced by the search's choice, so that
    config.yaml holds a concrete prompt; the config unchanged (and no result) otherwise."""
    if not wants_search(method_config, task):
        return config, backbone, None
    backbone = backbone or load_backbone(config.model)
    method_spec(config.method).check_backbone(backbone)
    calibrate_given = "calibrate" in config.method_options
    # The search reads the body as the run will: in the run's format (bfloat16 where the hardware
    # computes it natively: about 3 times faster on such a CPU), its label scores in float32.
    device_type = next(backbone.model.parameters()).device.type
    with config.precision().autocast(device_type):
        chosen, result = searched(method_config, task, backbone, calibrate_given, progress)
    options = {**config.method_options, "patterns": chosen.patterns, "verbalizer": chosen.verbalizer,
               "calibrate": chosen.calibrate}
    return replace(config, method_options=options), backbone, result


def config_from_dict(data: dict, folder: Path | None = None) -> RunConfig:
    """A RunConfig from a config.yaml's mapping, every key and type checked; a relative task path
    (older run folders) is looked up from the working directory, then from the run folder up."""
    where = f"{folder / 'config.yaml'}" if folder is not None else "run configuration"
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of options, got {type(data).__name__}")
    data = dict(data)
    data.pop("task_info", None)
    data.pop("pretune_version", None)
    data.pop("dtype_chosen", None)
    data.pop("data_source", None)  # in-memory data: what it was (checked by `resume_run`)
    data.pop("model_source", None)  # what the model resolved to, for the record
    data.setdefault("dtype", "float32")  # run folders from before --dtype computed in float32
    training = data.pop("training", {})
    check_fields(RunConfig, data, where)
    check_fields(TrainConfig, training, f"{where} (training)")
    if "task" not in data:
        raise UserError(f"{where}: no task")
    if folder is not None:
        data["task"] = _found_from(data["task"], Path(folder))
    return RunConfig(training=TrainConfig(**training), **data)


def absolute_if_path(spec) -> str:
    return str(Path(spec).resolve()) if Path(spec).exists() else str(spec)


def _found_from(spec: str, folder: Path) -> str:
    if Path(spec).is_absolute() or Path(spec).exists():
        return spec
    for base in [folder, *folder.resolve().parents]:
        if (base / spec).exists():
            return str(base / spec)
    return spec  # a benchmark task name, or gone: load_task says which
