"""PET prompt-tuning: pose the task as a cloze question and read the label off the LM's guess at the mask.

    "{text} It was {mask}."  +  positive=great negative=terrible

Each example is rendered through a pattern; the label scores are the log-probabilities of the
verbalizer's words in place of the mask (see `scoring` for masked and causal LMs). With no
training at all this is zero-shot classification; training is cross-entropy over those scores
through the shared trainer, with whichever body parameters `--train` chooses (PET trains all).

Options beyond one pattern:
- contextual calibration (Zhao et al. 2021): divide the label probabilities by those of
  content-free inputs ("N/A", "", "[MASK]"), recomputed whenever the weights may have changed;
- PET's auxiliary language-modelling loss on unlabelled text, added to each training step;
- several patterns: an ensemble (one model per pattern, see `ensemble`), optionally distilled
  into one model on unlabelled examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..cloze.lm import language_modelling_batch
from ..cloze.pattern import Mask, Pattern, PatternRenderer, Rendered
from ..cloze.prompt import Prompt, resolve_prompts
from ..cloze.scoring import LabelWordScorer, causal_lm_batch, masked_lm_batch, require_language_model
from ..cloze.verbalizer import AGGREGATIONS, DEFAULT_AGGREGATION, Verbalizer, aggregate, tokenize_label_words
from ..data import Example, Task, read_examples
from ..errors import UserError

# A module import: `ensemble` imports the trainer, which imports this package (a cycle by name only).
from ..training import recipes as ensembles
from .base import Method, MethodConfig, body_parameter_group

log = logging.getLogger(__name__)

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al.'s content-free inputs, averaged
WEIGHTINGS = ("uniform", "dev")


@dataclass
class PetConfig(MethodConfig):
    patterns: list[str] = field(default_factory=list)  # one, or several for an ensemble; none: the task's built-in one
    verbalizer: str | None = None  # "label=word,word label=word"; none: the built-in one, else the label names
    aggregate: str = DEFAULT_AGGREGATION  # how a label's words combine: logsumexp | mean | max
    calibrate: bool = False  # contextual calibration of the label probabilities
    max_length: int = 256
    unlabelled: str | None = None  # a data file whose texts serve the auxiliary loss and distillation
    aux_lm_weight: float = 0.0  # weight of the auxiliary LM loss (PET used 1e-4); 0: off
    aux_batch_size: int = 4
    ensemble_weighting: str = "dev"  # members' weights: uniform, or their accuracy on dev before training (PET)
    distil: bool = False  # distil the trained ensemble into one model on the unlabelled examples
    distil_temperature: float = 2.0  # softens the ensemble's distributions used as soft labels (PET: 2)

    def __post_init__(self):
        if isinstance(self.patterns, str):
            self.patterns = [self.patterns]
        self.patterns = list(self.patterns or [])

    def validate(self, task: Task | None = None) -> None:
        parsed = [Pattern.parse(p) for p in self.patterns]
        words = Verbalizer.parse(self.verbalizer) if self.verbalizer else None
        if self.aggregate not in AGGREGATIONS:
            raise UserError(f"unknown --aggregate '{self.aggregate}' (choose one of {', '.join(AGGREGATIONS)})")
        if self.ensemble_weighting not in WEIGHTINGS:
            raise UserError(f"unknown --ensemble-weighting '{self.ensemble_weighting}' (choose uniform or dev)")
        if self.max_length < 8:
            raise UserError(f"--max-length must be at least 8, got {self.max_length}")
        if self.aux_lm_weight < 0 or self.aux_batch_size < 1 or self.distil_temperature <= 0:
            raise UserError("--aux-lm-weight must be >= 0, --aux-batch-size >= 1 and --distil-temperature > 0")
        if self.distil and len(self.patterns) < 2:
            raise UserError("--distil needs an ensemble to distil: give --pattern several times")
        if self.distil and not self.unlabelled:
            raise UserError("--distil needs unlabelled examples: give --unlabelled FILE")
        if task is not None:
            _check_task(task, parsed, words)
        # Only a task with training data reads the file: a saved run predicts without it.
        if self.unlabelled and task is not None and task.train and not Path(self.unlabelled).is_file():
            raise UserError(f"--unlabelled {self.unlabelled}: no such file")

    def unlabelled_examples(self) -> list[Example]:
        return read_examples(self.unlabelled, require_label=False) if self.unlabelled else []


def _check_task(task: Task, patterns: list[Pattern], words: Verbalizer | None) -> None:
    if task.is_regression:
        raise UserError(f"--method pet needs a classification task; '{task.name}' is a regression task")
    if words is not None:
        words.for_labels(task.labels)
    examples = task.train + task.dev + task.test
    for pattern in patterns:
        if "text_pair" in pattern.fields and examples and not task.has_pairs:
            raise UserError(f"pattern '{pattern}' uses {{text_pair}} but task '{task.name}' has single texts")
        if task.has_pairs and "text_pair" not in pattern.fields:
            log.warning("pattern '%s' ignores the second text of task '%s'", pattern, task.name)


class BoundPrompt:
    """A prompt bound to a tokenizer: renders examples, and holds its label words' token ids."""

    def __init__(self, prompt: Prompt, tokenizer, kind: str, max_length: int):
        self.prompt = prompt
        self.max_length = max_length
        # A causal LM scores what follows the mask, so no end-of-text marker goes after it.
        self.renderer = PatternRenderer(prompt.pattern, tokenizer, closing_special_tokens=kind == "mlm")
        self.words = tokenize_label_words(
            prompt.verbalizer, self.renderer.encode, prompt.pattern.mask.lead, tokenizer.unk_token_id
        )
        self.word_labels = torch.tensor(self.words.labels)
        if kind == "causal" and isinstance(prompt.pattern.segments[0], Mask) and not self.renderer.opening:
            raise UserError(f"pattern '{prompt.pattern}': a causal LM needs text before {{mask}}")

    def render(self, example: Example) -> Rendered:
        values = {}
        for name in self.prompt.pattern.fields:
            value = example.field(name)
            if value is None:
                where = f"{example.source}: " if example.source else ""
                raise UserError(f"{where}pattern '{self.prompt.pattern}' uses {{{name}}} but the example has no {name}")
            values[name] = value
        # Room for the longest label word, in place of the mask (masks, or the word itself).
        return self.renderer.render(values, self.max_length, reserved=self.words.max_tokens)


class PetMethod(Method):
    name = "pet"
    config_class = PetConfig
    default_lr = 1e-5  # PET adds no parameters of its own: every rate is a body rate
    default_body_lr = 1e-5
    default_training = "full"
    # Adapters and biases start from zero or train few weights: they need a larger rate than full fine-tuning.
    default_rates: ClassVar[dict[str, float]] = {"lora": 5e-4, "bitfit": 1e-3}
    allows_soft_tokens: ClassVar[bool] = False  # P-tuning's patterns have them; PET's do not

    @classmethod
    def check_backbone(cls, backbone) -> None:
        require_language_model(backbone)

    def __init__(self, backbone, task: Task, config: PetConfig, training):
        config.validate(task)
        self.check_backbone(backbone)
        super().__init__(backbone, task, config, training)
        self.scorer = LabelWordScorer(backbone)
        self.prompts = self.run_prompts(config, task, backbone.kind)
        self._check_soft_tokens()
        tokenizer = backbone.tokenizer
        self.max_length = _max_length(config.max_length, backbone)
        self.bound = [BoundPrompt(p, tokenizer, backbone.kind, self.max_length) for p in self.prompts]
        self.mask_id, self.pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        if backbone.kind == "mlm" and self.mask_id is None:
            raise UserError(f"model '{backbone.name}' is a masked LM without a mask token")
        self.in_use = list(range(len(self.prompts)))  # the prompts that collate and forward serve
        self.ensemble = ensembles.Ensemble(len(self.prompts))
        self.auxiliary_items: list[dict] = []
        self._content_free: dict[int, torch.Tensor] = {}

    def run_prompts(self, config: PetConfig, task: Task, kind: str) -> list[Prompt]:
        """The run's pattern-verbalizer pairs: the user's patterns, else the task's built-in one
        (P-tuning derives its templates from them)."""
        return resolve_prompts(config.patterns, config.verbalizer, task, kind)

    def _check_soft_tokens(self) -> None:
        for prompt in self.prompts:
            if prompt.pattern.soft_tokens and not self.allows_soft_tokens:
                raise UserError(f"pattern '{prompt.pattern}' has soft tokens [P]: soft tokens need --method ptuning")

    # -- featurize and collate: every prompt's rendering, batches for the prompts in use ---
    def featurize(self, examples: list[Example], progress: bool = True) -> list[dict]:
        return [{"rendered": [bound.render(example) for bound in self.bound]} for example in examples]

    @staticmethod
    def item_length(item: dict) -> int:
        return max(len(r) for r in item["rendered"])

    def collate(self, items: list[dict]) -> dict:
        return {"prompts": {i: self.prompt_batch(i, [item["rendered"][i] for item in items]) for i in self.in_use}}

    def prompt_batch(self, index: int, rendered: list[Rendered]) -> dict:
        words = self.bound[index].words
        if self.backbone.kind == "mlm":
            return masked_lm_batch(rendered, words, self.mask_id, self.pad_id)
        return causal_lm_batch(rendered, words, self.pad_id)

    # -- forward: label scores ------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        prompts = batch["prompts"]
        if len(prompts) == 1:
            (index, prompt_batch), = prompts.items()
            return self.prompt_scores(index, prompt_batch)
        return self.ensemble.scores(self, prompts)

    def prompt_scores(self, index: int, batch: dict) -> torch.Tensor:
        """Label scores [B, C] of one prompt: log-probabilities of its words, up to a constant per
        example; calibrated (in eval mode) when asked."""
        scores = self.uncalibrated_scores(index, batch)
        if self.config.calibrate and not self.training:
            scores = scores.float().log_softmax(dim=-1) - self.content_free_log_probs(index)
        return scores

    def uncalibrated_scores(self, index: int, batch: dict) -> torch.Tensor:
        # Nested prompt batches are not moved by the trainer (it moves a batch's top-level tensors).
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        words = self.scorer.word_scores(batch, self.input_embeddings(index, batch))
        bound = self.bound[index]
        return aggregate(words, bound.word_labels, self.task.num_labels, self.config.aggregate)

    def input_embeddings(self, index: int, batch: dict) -> torch.Tensor | None:
        """Embeddings to feed instead of token ids; P-tuning puts its soft tokens in here."""
        return None

    # -- contextual calibration -------------------------------------------------------------
    def content_free_log_probs(self, index: int) -> torch.Tensor:
        """log p(label | content-free input) of a prompt, averaged over the inputs in probability space;
        cached until the weights may change (training, another ensemble member)."""
        if index not in self._content_free:
            examples = [Example(text, text) for text in CONTENT_FREE]
            batch = self.prompt_batch(index, [self.bound[index].render(e) for e in examples])
            with torch.no_grad():
                probabilities = self.uncalibrated_scores(index, batch).float().softmax(dim=-1).mean(dim=0)
            self._content_free[index] = probabilities.log()
        return self._content_free[index]

    def forget_calibration(self) -> None:
        self._content_free.clear()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.forget_calibration()  # training changes the weights the calibration was measured with
        return self

    # -- training ------------------------------------------------------------------------------
    def fit(self, trainer, train_items, train_targets, dev_items=None, dev_targets=None):
        """One prompt: the shared trainer. Several: one model per prompt, then optional distillation."""
        unlabelled = self.config.unlabelled_examples()
        if self.config.aux_lm_weight:
            # PET's auxiliary loss reads unlabelled text; without any, the training texts serve.
            self.auxiliary_items = self.featurize(unlabelled) if unlabelled else train_items
        if len(self.prompts) == 1:
            return trainer.fit(train_items, train_targets, dev_items, dev_targets)
        return ensembles.fit_ensemble(self, trainer, train_items, train_targets, dev_items, dev_targets, unlabelled)

    def auxiliary_loss(self) -> torch.Tensor | None:
        if not (self.training and self.config.aux_lm_weight and self.auxiliary_items):
            return None
        index = self.in_use[0]
        picks = torch.randint(len(self.auxiliary_items), (self.config.aux_batch_size,)).tolist()
        rendered = [self.auxiliary_items[i]["rendered"][index] for i in picks]
        batch = language_modelling_batch(rendered, self.backbone.kind, self.bound[index].renderer, self.mask_id, self.pad_id)
        if batch is None:
            return None
        batch = {k: v.to(self.device) for k, v in batch.items()}
        extra = {"use_cache": False} if self.backbone.kind == "causal" else {}
        return self.config.aux_lm_weight * self.model(**batch, **extra).loss

    def param_groups(self, lr, body_lr) -> list[dict]:
        rate = body_lr or lr or self.default_rates.get(self.body_training.mode, self.default_body_lr)
        return body_parameter_group(self.model, rate)

    # -- what is saved: one model, an ensemble's members, or a distilled model -------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self.ensemble.members:
            return self.ensemble.state_dict()
        state = super().trainable_state_dict()
        return {ensembles.DISTILLED + k: v for k, v in state.items()} if self.ensemble.distilled else state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.forget_calibration()
        if ensembles.Ensemble.holds_members(state):
            self.ensemble.load_state_dict(state)
            self.in_use = list(range(len(self.prompts)))
            return
        if any(k.startswith(ensembles.DISTILLED) for k in state):
            self.ensemble.distilled, self.in_use = True, [0]
            state = {k.removeprefix(ensembles.DISTILLED): v for k, v in state.items()}
        super().load_trainable_state_dict(state)

    def load_member(self, state: dict[str, torch.Tensor]) -> None:
        """Swap an ensemble member's weights in; each member keeps its own calibration."""
        super().load_trainable_state_dict(state)


def _max_length(configured: int, backbone) -> int:
    """The configured limit, capped by what the tokenizer and the position embeddings allow."""
    limits = [configured, getattr(backbone.tokenizer, "model_max_length", None)]
    limits.append(getattr(backbone.model.config.get_text_config(), "max_position_embeddings", None))
    return min(limit for limit in limits if isinstance(limit, int) and limit > 0)
