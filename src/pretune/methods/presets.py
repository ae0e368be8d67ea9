"""The named methods: `head`, and the presets of the cloze method.

    pet            the task's pattern, the verbalizer's words at the mask, whole body (PET, Schick & Schuetze 2021)
    ptuning        soft tokens from an LSTM (or MLP) encoder among the pattern's words, body frozen
                   (P-tuning, Liu et al. 2021)
    prompt-tuning  soft tokens in front of the pattern, no encoder, body frozen (Lester et al. 2021)
    deep-prompt    trained keys and values at every layer, body frozen (P-tuning v2, prefix tuning)

A preset fixes the cloze method's input and a few defaults, and names the options a user may give
it. A new method is one more entry here, or (a new kind of part) one module in `cloze/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from ..backbones import Backbone
from ..cloze.lm import language_model
from ..data import Task
from ..errors import UserError
from ..tuning import BodyTraining
from ..validation import check_fields, check_numbers
from .autoprompt import searched
from .base import Method, MethodConfig
from .cloze import ClozeConfig, ClozeMethod, run_prompts
from .head import HeadConfig, HeadMethod

PROMPT = ("patterns", "verbalizer", "aggregate", "scoring", "label_tokens", "calibrate", "max_length")
RECIPES = ("unlabelled", "aux_lm_weight", "aux_batch_size", "ensemble_weighting", "distil", "distil_temperature",
           "generations", "generation_growth")
TRAINED_PROMPT = (*PROMPT, "readout", "head", "prompt_length")


@dataclass(frozen=True)
class MethodSpec:
    """A method as users name it: its options, defaults, and how its modules are built."""

    name: str
    about: str
    config_class: type[MethodConfig]
    options: tuple[str, ...]  # the config fields a user may set
    default_training: str  # which body parameters train when the user does not say
    build: Callable[[Backbone, Task, MethodConfig, BodyTraining], list[Method]]
    check_backbone: Callable[[Backbone], object]  # refuses, with a UserError, a model the method cannot use
    fixed: dict = field(default_factory=dict)  # config values the preset sets

    def make_config(self, options: dict, task: Task | None = None) -> MethodConfig:
        """The config from a flat dict of options; an unknown option is an error."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise UserError(f"method '{self.name}' has no option {', '.join(unknown)} "
                            f"(its options: {', '.join(sorted(self.options))})")
        check_fields(self.config_class, options, f"method '{self.name}'")
        config = self.config_class(**{**self.fixed, **options})
        check_numbers(asdict(config))
        config.validate(task)
        return config


def build_head(backbone, task, config, training) -> list[Method]:
    return [HeadMethod(backbone, task, config, training)]


def build_cloze(backbone, task, config: ClozeConfig, training) -> list[Method]:
    """One cloze method per prompt: one, or a pattern ensemble's members (they share the body).
    A prompt left to the search (`auto`, or a task without a built-in one) is searched here when
    the caller has not done so already (the API does, to record the choice in the run folder)."""
    config, _ = searched(config, task, backbone)
    prompts = run_prompts(config, task, language_model(backbone).name)
    return [ClozeMethod(backbone, task, config, training, prompt) for prompt in prompts]


def _cloze(name: str, about: str, options: tuple[str, ...], training: str, **fixed) -> MethodSpec:
    # A cloze method needs a language-model head: `language_model` refuses an encoder.
    return MethodSpec(name, about, ClozeConfig, options, training, build_cloze, language_model, {"method": name, **fixed})


SPECS = (
    MethodSpec("head", "a linear or MLP head on a pooled hidden state", HeadConfig,
               tuple(f.name for f in fields(HeadConfig)), "frozen", build_head, lambda backbone: None),
    _cloze("pet", "cloze pattern, label words at the mask, whole body", (*PROMPT, *RECIPES), "full", input="pattern"),
    _cloze("ptuning", "soft tokens from a prompt encoder among the pattern's words, body frozen",
           (*TRAINED_PROMPT, "encoder"), "frozen", input="soft"),
    _cloze("prompt-tuning", "soft tokens in front of the pattern, no encoder, body frozen",
           TRAINED_PROMPT, "frozen", input="soft", encoder="none"),
    _cloze("deep-prompt", "trained keys and values at every layer, body frozen",
           (*TRAINED_PROMPT, "reparam"), "frozen", input="prefix", prompt_length=16),
)
