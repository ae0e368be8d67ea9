"""P-tuning: a cloze template with trainable continuous tokens, read through PET's verbalizer or a head.

    "[P*4]Review: {text}\\nSentiment: {mask}"   +  positive=positive negative=negative

Soft tokens (`[P]`, `[P*3]`, `[P:great]`) sit anywhere beside the text, the anchor words and the
mask. They enter the model through `inputs_embeds` (the token ids' embeddings, the soft positions
replaced), so any masked or causal Hugging Face LM works. A prompt encoder (`lstm`, `mlp`, `none`;
see `prompt_encoders`) produces them while training; `finalize` then materialises them, so the
saved adapter holds only their embeddings (plus a head, or body weights, when those trained).

By default the body is frozen: only the prompt (and head) train, and gradients flow through the
frozen body to its input embeddings without the body's own gradients or optimizer state. With
`--train full | lora | bitfit | last:N` the body trains too, at its own, lower rate (`--body-lr`).

`--prompt-length N` prepends N soft tokens to the task's PET pattern (or to `--pattern`): with
`--encoder none` that is Lester et al. (2021)'s prompt tuning, anchored by the pattern's words.

`TrainablePromptMethod` is what P-tuning shares with deep prompts (`deep_prompt`): one template,
the readout, the learning rates, and loading a run's materialised prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..patterns import Pattern, Rendered, Soft
from ..precision import exact
from ..prompt_encoders import ENCODERS, SoftPrompt, initial_embeddings
from ..scoring import causal_lm_batch, masked_lm_batch
from ..task_defaults import Prompt, ptuning_template
from ..verbalizers import LabelWords, aggregate
from .base import body_parameter_group, new_parameter_group
from .head import HeadConfig, build_head
from .pet import PetConfig, PetMethod

READOUTS = ("verbalizer", "head")
# The prompt's learning rate when --lr is not given. Embeddings trained directly (no encoder) need
# larger steps than an encoder's weights, whose residual output starts at zero; prompt tuning is known
# to want large rates (Lester et al. 2021 used 0.3 with Adafactor). These are starting points, not a
# sweep's optimum: benchmarks/ptuning_sst2.md shows what they give on few-shot SST-2.
ENCODER_RATES = {"lstm": 3e-4, "mlp": 3e-4, "none": 1e-2}


@dataclass
class PromptConfig(PetConfig):
    """Options shared by the methods that train prompts (P-tuning, deep prompts)."""

    readout: str = "verbalizer"  # label scores from the verbalizer's words, or a head on the hidden state read there
    head: str = "linear"  # the head of `readout: head`: linear | mlp

    def validate(self, task=None) -> None:
        super().validate(task)
        method = self.method_name
        if self.readout not in READOUTS:
            raise UserError(f"unknown --readout '{self.readout}' (choose verbalizer or head)")
        if self.head not in ("linear", "mlp"):
            raise UserError(f"unknown --head '{self.head}' (choose linear or mlp)")
        if len(self.patterns) > 1:
            raise UserError(f"--method {method} trains one template: give --pattern once (pattern ensembles are --method pet)")
        if self.aux_lm_weight:
            raise UserError(f"--aux-lm-weight is PET's auxiliary loss; --method {method} does not take it")
        if self.calibrate and self.readout == "head":
            raise UserError("--calibrate corrects the verbalizer's probabilities; it does not apply to --readout head")

    method_name: ClassVar[str] = "ptuning"


@dataclass
class PtuningConfig(PromptConfig):
    encoder: str = "lstm"  # lstm | mlp | none: what produces the soft tokens while training
    prompt_length: int | None = None  # soft tokens prepended to the pattern (prompt tuning); None: the template's own

    def validate(self, task=None) -> None:
        super().validate(task)
        if self.encoder not in ENCODERS:
            raise UserError(f"unknown --encoder '{self.encoder}' (choose one of {', '.join(ENCODERS)})")
        if self.prompt_length is not None and self.prompt_length < 1:
            raise UserError(f"--prompt-length must be at least 1, got {self.prompt_length}")
        if self.patterns and not self.prompt_length and not Pattern.parse(self.patterns[0]).soft_tokens:
            pattern = self.patterns[0]
            raise UserError(f"pattern '{pattern}' has no soft tokens: add some ('[P*4]{pattern}') or give --prompt-length N")


class TrainablePromptMethod(PetMethod):
    """PET's scoring with trained prompts: one template, a verbalizer or head readout, prompt and
    body learning rates, and prompts that `finalize` materialises."""

    default_lr = 1e-3  # the prompt's (and head's) rate
    default_body_lr = 1e-5
    default_training = "frozen"

    def __init__(self, backbone, task, config: PromptConfig, training):
        super().__init__(backbone, task, config, training)
        readout = HeadConfig(head=config.head)
        self.head = build_head(backbone.hidden_size, task.num_labels, readout) if config.readout == "head" else None
        self.trained_parameters: int | None = None  # counted before materialising: what training updated

    # -- the hooks a prompt method fills in ---------------------------------------------------
    def prefix_inputs(self, batch: dict) -> dict:
        """Extra inputs for the body besides the token embeddings (deep prompts: a key/value cache)."""
        return {}

    def materialize(self) -> None:
        """Replace the prompt's encoder by the prompt it computes now."""

    # -- scoring ----------------------------------------------------------------------------------
    def prompt_batch(self, index: int, rendered: list[Rendered]) -> dict:
        if self.head is None:
            return super().prompt_batch(index, rendered)
        # A head reads one position per example: the mask (masked LM), or the last token before the
        # label (causal LM, which cannot see what follows it, so the text after the mask is dropped).
        position = LabelWords(("{mask}",), ((self.mask_id if self.backbone.kind == "mlm" else self.pad_id,),), (0,), 1)
        if self.backbone.kind == "mlm":
            return masked_lm_batch(rendered, position, self.mask_id, self.pad_id)
        return causal_lm_batch([Rendered(r.prefix, [], r.soft_in_prefix) for r in rendered], position, self.pad_id)

    def uncalibrated_scores(self, index: int, batch: dict) -> torch.Tensor:
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        hidden = self.scorer.hidden_states(batch, self.input_embeddings(index, batch), **self.prefix_inputs(batch))
        if self.head is not None:
            read = hidden[batch["target_row"], batch["target_position"]]
            with exact(read.device.type):  # label scores in float32
                return self.head(read.float())
        words = self.scorer.word_scores_from_hidden(hidden, batch)
        return aggregate(words, self.bound[index].word_labels, self.task.num_labels, self.config.aggregate)

    # -- training and saving ------------------------------------------------------------------------
    def prompt_parameters(self) -> list[nn.Parameter]:
        """Everything the method adds to the body: prompt, encoder, head."""
        return [p for name, p in self.named_parameters() if not name.startswith("model.")]

    def prompt_rate(self) -> float:
        """The prompt's learning rate when the user gives none."""
        return self.default_lr

    def param_groups(self, lr, body_lr) -> list[dict]:
        body_rate = body_lr or self.default_rates.get(self.body_training.mode, self.default_body_lr)
        prompt = new_parameter_group("prompt", self.prompt_parameters(), lr or self.prompt_rate())
        return [prompt, *body_parameter_group(self.model, body_rate)]

    def finalize(self) -> None:
        self.trained_parameters = self.trainable_parameter_count()
        self.materialize()

    def trainable_parameter_count(self) -> int:
        return self.trained_parameters if self.trained_parameters is not None else super().trainable_parameter_count()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = {name for name, p in self.named_parameters() if p.requires_grad}
        if own - set(state):  # no encoder weights: a saved run's materialised prompt
            self.materialize()
        super().load_trainable_state_dict(state)


class PtuningMethod(TrainablePromptMethod):
    name = "ptuning"
    config_class = PtuningConfig
    allows_soft_tokens: ClassVar[bool] = True

    def __init__(self, backbone, task, config: PtuningConfig, training):
        super().__init__(backbone, task, config, training)
        pattern = self.prompts[0].pattern
        _check_soft_token_places(pattern, backbone.kind)
        initial = initial_embeddings(pattern.soft_tokens, self.model.get_input_embeddings(), backbone.tokenizer)
        self.soft_prompt = SoftPrompt(initial, config.encoder)

    def run_prompts(self, config: PtuningConfig, task, kind: str) -> list[Prompt]:
        """The user's template; or the task's PET pattern with `prompt_length` soft tokens in front;
        or the task's built-in P-tuning template (see `task_defaults.ptuning_template`)."""
        (prompt,) = super().run_prompts(config, task, kind)
        pattern = prompt.pattern
        if config.prompt_length:
            pattern = Pattern.parse(f"[P*{config.prompt_length}]" + pattern.source)
        elif not config.patterns:
            pattern = ptuning_template(pattern)
        return [Prompt(pattern, prompt.verbalizer)]

    def input_embeddings(self, index: int, batch: dict) -> torch.Tensor:
        """The ids' embeddings with the soft tokens in place: each row of a batch holds all of the
        template's soft tokens in template order, so the prompt repeats once per row."""
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        soft = batch["soft_mask"]
        tokens = self.soft_prompt().to(embeds.dtype)
        return embeds.masked_scatter(soft.unsqueeze(-1), tokens.repeat(soft.shape[0], 1))

    def prompt_rate(self) -> float:
        return ENCODER_RATES[self.config.encoder]

    def materialize(self) -> None:
        self.soft_prompt.materialize()


def _check_soft_token_places(pattern: Pattern, kind: str) -> None:
    after_mask = pattern.segments[pattern.segments.index(pattern.mask) + 1 :]
    if kind == "causal" and any(isinstance(s, Soft) for s in after_mask):
        raise UserError(f"pattern '{pattern}': a causal LM reads left to right, so soft tokens after {{mask}} "
                        "cannot change its answer; put them before {mask}")

