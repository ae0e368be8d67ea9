"""The cloze method: pose the task as a fill-in-the-blank question and read the label off the LM.

    "{text} It was {mask}."  +  positive=great negative=terrible

One method, composed of three parts (`pet`, `ptuning`, `prompt-tuning` and `deep-prompt` are
presets of it, see `presets`):

- a prompt: a pattern and a verbalizer (`cloze.prompt`), bound to the model's tokenizer;
- an input (`cloze.inputs`): the pattern's tokens alone | soft tokens from a prompt encoder |
  trained key/value prefixes at every layer;
- a readout (`cloze.readouts`): the verbalizer's words at the mask | a head at the mask.

    example --render--> Rendered --readout.batch--> ClozeBatch --input.body_inputs--> body
            --hidden states--> readout.scores --> [calibration] --> label scores [B, C]

Masked and causal LMs differ only inside `cloze.lm`; noisy-channel scoring (`--scoring channel`) is
the causal layout of `cloze.channel`, scoring the text after the label word. With no training this is zero-shot
classification; training is cross-entropy over the label scores through the shared trainer.
Contextual calibration (Zhao et al. 2021, `--calibrate`) divides the label probabilities by those
of content-free inputs ("N/A", "", "[MASK]"), recomputed whenever the weights may have changed.
Pattern ensembles, distillation and PET's auxiliary LM loss are recipes above the trainer
(`training.recipes`): a cloze method holds exactly one prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..cloze.channel import (
    CHANNEL,
    DIRECT,
    EXAMPLE_PATTERN,
    SCORINGS,
    require_text_after_mask,
    scored_language_model,
)
from ..cloze.inputs import INPUTS, build_input
from ..cloze.label_rows import FIXED, LABEL_TOKENS, LEARNED
from ..cloze.lm import ClozeBatch
from ..cloze.pattern import Pattern, Rendered
from ..cloze.prompt import BoundPrompt, Prompt, fitting_length, ptuning_template, resolve_prompts
from ..cloze.readouts import READOUTS, build_readout
from ..cloze.search import CONTENT_FREE
from ..cloze.soft import ENCODERS
from ..cloze.verbalizer import AGGREGATIONS, DEFAULT_AGGREGATION, Verbalizer
from ..data import Example, Task, read_examples
from ..errors import UserError
from ..heads import HEADS
from ..tuning import BodyTraining
from .base import Method, MethodConfig, Rates, body_groups, trainable

log = logging.getLogger(__name__)

AUTO = "auto"  # --pattern auto, --verbalizer auto: the prompt search chooses (methods.autoprompt)
WEIGHTINGS = ("uniform", "dev")
# The body's rate when --body-lr is not given. Adapters and biases start from zero or train few
# weights: they need a larger rate than full fine-tuning.
BODY_RATES = {"lora": 5e-4, "bitfit": 1e-3}
DEFAULT_BODY_RATE = 1e-5
# The prompt's (and a head readout's) rate when --lr is not given. Embeddings trained directly (no
# encoder) need larger steps than an encoder's weights, whose residual output starts at zero; prompt
# tuning is known to want large rates (Lester et al. 2021 used 0.3 with Adafactor). These are
# starting points, not a sweep's optimum: benchmarks/ptuning_sst2.md shows what they give.
ENCODER_RATES = {"lstm": 3e-4, "mlp": 3e-4, "none": 1e-2}
OWN_RATE = 1e-3  # a prefix's, and a head readout's over a plain pattern


GENERATION_GROWTH = 5  # iPET's factor d (Schick & Schütze 2021)


@dataclass
class ClozeConfig(MethodConfig):
    method: str = "pet"  # the preset's name (for messages)
    input: str = "pattern"  # pattern | soft | prefix: set by the preset
    patterns: list[str] = field(default_factory=list)  # one, or several for an ensemble; none: the task's built-in one
    verbalizer: str | None = None  # "label=word,word label=word"; none: the built-in one, else the label names
    aggregate: str = DEFAULT_AGGREGATION  # how a label's words combine: logsumexp | mean | max
    scoring: str = DIRECT  # direct: the word given the text | channel: the text after the word (causal LMs, cloze.channel)
    calibrate: bool = False  # contextual calibration of the label probabilities
    label_tokens: str = FIXED  # the label words' output rows: the model's (fixed) or trainable copies (learned, DART)
    max_length: int = 256
    readout: str = "verbalizer"  # label scores from the verbalizer's words, or a head on the hidden state read there
    head: str = "linear"  # the head of `readout: head`: linear | mlp
    encoder: str = "lstm"  # soft input: lstm | mlp | none, what produces the soft tokens while training
    prompt_length: int | None = None  # soft: tokens prepended to the pattern; prefix: vectors at every layer
    reparam: bool = False  # prefix: train it through an MLP (Li & Liang 2021), materialised after training
    # recipes (pattern ensembles, distillation, auxiliary LM loss; see training.recipes; iPET: training.ipet)
    unlabelled: str | None = None  # a data file whose texts serve the auxiliary loss and distillation
    aux_lm_weight: float = 0.0  # weight of the auxiliary LM loss (PET used 1e-4); 0: off
    aux_batch_size: int = 4
    ensemble_weighting: str = "dev"  # members' weights: uniform, or their accuracy on dev before training (PET)
    distil: bool = False  # distil the trained ensemble into one model on the unlabelled examples
    distil_temperature: float = 2.0  # softens the ensemble's distributions used as soft labels (PET: 2)
    generations: int = 1  # iPET: generations of the ensemble, each on the one before's pseudo-labels; 1: PET
    generation_growth: int = GENERATION_GROWTH  # iPET: each generation's training set is this many times the one before's (paper: 5)

    def __post_init__(self):
        if isinstance(self.patterns, str):
            self.patterns = [self.patterns]
        self.patterns = list(self.patterns or [])

    @property
    def trains_a_prompt(self) -> bool:
        return self.input != "pattern"

    def default_rates(self, training: BodyTraining) -> Rates:
        body = BODY_RATES.get(training.mode, DEFAULT_BODY_RATE)
        own = {"pattern": None, "soft": ENCODER_RATES[self.encoder], "prefix": OWN_RATE}[self.input]
        if own is None and (self.readout == "head" or self.label_tokens == LEARNED):
            own = OWN_RATE  # a head, or learned label rows, over a plain pattern
        return Rates(own=own, body=body)

    def validate(self, task: Task | None = None) -> None:
        if AUTO in self.patterns and len(self.patterns) > 1:
            raise UserError("--pattern auto chooses the patterns itself: give it alone, not beside other patterns")
        parsed = [Pattern.parse(p) for p in self.patterns if p != AUTO]
        words = Verbalizer.parse(self.verbalizer) if self.verbalizer and self.verbalizer != AUTO else None
        self._check_values()
        if self.trains_a_prompt:
            self._check_trained_prompt(parsed)
        if self.scoring == CHANNEL:
            self._check_channel(parsed)
        if self.label_tokens == LEARNED:
            self._check_learned_label_tokens()
        if task is not None:
            _check_task(task, parsed, words, self.method)
        # Only a task with training data reads the file: a saved run predicts without it.
        if self.unlabelled and task is not None and task.train and not Path(self.unlabelled).is_file():
            raise UserError(f"--unlabelled {self.unlabelled}: no such file")

    def _check_values(self) -> None:
        checks = [
            (self.aggregate in AGGREGATIONS, f"unknown --aggregate '{self.aggregate}' (choose one of {', '.join(AGGREGATIONS)})"),
            (self.ensemble_weighting in WEIGHTINGS, f"unknown --ensemble-weighting '{self.ensemble_weighting}' (choose uniform or dev)"),
            (self.max_length >= 8, f"--max-length must be at least 8, got {self.max_length}"),
            (self.aux_lm_weight >= 0 and self.aux_batch_size >= 1 and self.distil_temperature > 0,
             "--aux-lm-weight must be >= 0, --aux-batch-size >= 1 and --distil-temperature > 0"),
            (not self.distil or len(self.patterns) >= 2, "--distil needs an ensemble to distil: give --pattern several times"),
            (not self.distil or self.unlabelled, "--distil needs unlabelled examples: give --unlabelled FILE"),
            (self.generations >= 1, f"--generations must be at least 1, got {self.generations}"),
            (self.generations == 1 or len(self.patterns) >= 2,
             f"--generations {self.generations} trains each pattern on the other patterns' pseudo-labels: "
             "give --pattern at least twice"),
            (self.generations == 1 or self.unlabelled,
             f"--generations {self.generations} pseudo-labels unlabelled texts: give --unlabelled FILE"),
            (self.generation_growth >= 2, f"--generation-growth must be at least 2, got {self.generation_growth}"),
            (self.generations > 1 or self.generation_growth == GENERATION_GROWTH,
             f"--generation-growth {self.generation_growth} grows iPET's generations: give --generations 2 or more"),
            (self.readout in READOUTS, f"unknown --readout '{self.readout}' (choose one of {', '.join(READOUTS)})"),
            (self.head in HEADS, f"unknown --head '{self.head}' (choose linear or mlp)"),
            (self.encoder in ENCODERS, f"unknown --encoder '{self.encoder}' (choose one of {', '.join(ENCODERS)})"),
            (self.prompt_length is None or self.prompt_length >= 1, f"--prompt-length must be at least 1, got {self.prompt_length}"),
            (self.input in INPUTS, f"unknown input '{self.input}'"),
            (self.scoring in SCORINGS, f"unknown --scoring '{self.scoring}' (choose one of {', '.join(SCORINGS)})"),
            (self.label_tokens in LABEL_TOKENS,
             f"unknown --label-tokens '{self.label_tokens}' (choose one of {', '.join(LABEL_TOKENS)})"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def _check_trained_prompt(self, patterns: list[Pattern]) -> None:
        if len(patterns) > 1:
            raise UserError(f"--method {self.method} trains one template: give --pattern once (pattern ensembles are --method pet)")
        if self.calibrate and self.readout == "head":
            raise UserError("--calibrate corrects the verbalizer's probabilities; it does not apply to --readout head")
        if self.input == "soft" and patterns and not self.prompt_length and not patterns[0].soft_tokens:
            pattern = self.patterns[0]
            raise UserError(f"pattern '{pattern}' has no soft tokens: add some ('[P*4]{pattern}') or give --prompt-length N")

    def _check_channel(self, patterns: list[Pattern]) -> None:
        """What channel scoring cannot go with, refused before any model loads (the model's kind is
        checked by `cloze.channel` once it is loaded)."""
        if not patterns:  # none given, or `auto`: the built-in and searched patterns end with the mask
            raise UserError("--scoring channel needs a --pattern of your own with the text after {mask}, "
                            f"e.g. '{EXAMPLE_PATTERN}' (the built-in and searched patterns end with the mask)")
        if self.verbalizer == AUTO:
            raise UserError("--verbalizer auto chooses words by direct scoring; with --scoring channel give the "
                            "words with --verbalizer")
        if self.readout != "verbalizer":
            raise UserError(f"--scoring channel scores the text after the verbalizer's words; it does not apply "
                            f"to --readout {self.readout}")
        for pattern in patterns:
            require_text_after_mask(pattern)

    def _check_learned_label_tokens(self) -> None:
        """What learned label rows cannot go with. `--pattern auto` can: the words are chosen first, the
        rows start from them, and the search then picks one pattern, no ensemble (see `methods.autoprompt`)."""
        if self.readout != "verbalizer":
            raise UserError(f"--label-tokens learned trains the rows the verbalizer's words are scored with; "
                            f"--readout {self.readout} reads no label words")
        if self.scoring == CHANNEL:
            raise UserError("--label-tokens learned trains the rows the label words are scored with; --scoring channel "
                            "never scores the label words (they are its input): leave --label-tokens fixed")
        if len(self.patterns) > 1:
            # Each member would need its own rows, and an ensemble's members all start from the first's state.
            raise UserError("--label-tokens learned trains one prompt's label words: give --pattern once "
                            "(pattern ensembles keep --label-tokens fixed)")

    def unlabelled_examples(self) -> list[Example]:
        return read_examples(self.unlabelled, require_label=False) if self.unlabelled else []


def _check_task(task: Task, patterns: list[Pattern], words: Verbalizer | None, method: str) -> None:
    if task.is_regression:
        raise UserError(f"--method {method} needs a classification task; '{task.name}' is a regression task")
    if words is not None:
        words.for_labels(task.labels)
    examples = task.train + task.dev + task.test
    for pattern in patterns:
        if "text_pair" in pattern.fields and examples and not task.has_pairs:
            raise UserError(f"pattern '{pattern}' uses {{text_pair}} but task '{task.name}' has single texts")
        if task.has_pairs and "text_pair" not in pattern.fields:
            log.warning("pattern '%s' ignores the second text of task '%s'", pattern, task.name)


def run_prompts(config: ClozeConfig, task: Task, kind: str) -> list[Prompt]:
    """The run's pattern-verbalizer pairs: the user's patterns, else the task's built-in one. A soft
    input takes `prompt_length` soft tokens in front of the pattern, or, with no pattern given, the
    task's built-in P-tuning template (see `cloze.prompt.ptuning_template`)."""
    prompts = resolve_prompts(config.patterns, config.verbalizer, task, kind)
    if config.input != "soft":
        return prompts
    (prompt,) = prompts
    pattern = prompt.pattern
    if config.prompt_length:
        pattern = Pattern.parse(f"[P*{config.prompt_length}]" + pattern.source)
    elif not config.patterns:
        pattern = ptuning_template(pattern)
    return [Prompt(pattern, prompt.verbalizer)]


class ClozeMethod(Method):
    """One prompt, an input and a readout over a masked or causal LM."""

    config_class = ClozeConfig

    def __init__(self, backbone, task: Task, config: ClozeConfig, training: BodyTraining, prompt: Prompt | None = None):
        config.validate(task)
        lm = scored_language_model(backbone, config.scoring)  # refuses a model without an LM head before anything else
        super().__init__(backbone, task, config, training)
        self.name = config.method
        self.lm = lm
        if prompt is None:
            (prompt,) = run_prompts(config, task, lm.name)
        if prompt.pattern.soft_tokens and config.input != "soft":
            raise UserError(f"pattern '{prompt.pattern}' has soft tokens [P]: soft tokens need --method ptuning")
        taken = config.prompt_length if config.input == "prefix" else 0
        self.max_length = fitting_length(config.max_length, backbone, taken)
        self.prompt = BoundPrompt(prompt, backbone.tokenizer, lm, self.max_length)
        # The readout before the input: the order their parameters draw from the seed.
        readout = build_readout(config.readout, self.prompt, lm, backbone, task, config)
        inputs = build_input(config.input, backbone, self.model, prompt.pattern, config.encoder, config.prompt_length,
                             config.reparam)
        self.add_module(readout.slot, readout)  # under the part's own name: `head.1.weight`, `soft_prompt.embeddings`
        self.add_module(inputs.slot, inputs)
        self._readout_slot, self._input_slot = readout.slot, inputs.slot
        self._content_free: torch.Tensor | None = None
        self.trained_parameters: int | None = None  # counted before materialising: what training updated

    @property
    def start_is_usable(self) -> bool:
        # The pattern read at the verbalizer's words is zero-shot PET before any step (LoRA starts as the
        # identity); soft tokens, prefixes and a new head start random.
        return self.config.input == "pattern" and self.config.readout == "verbalizer"

    @property
    def readout(self) -> nn.Module:
        return getattr(self, self._readout_slot)

    @property
    def input(self) -> nn.Module:
        return getattr(self, self._input_slot)

    # -- featurize and collate ---------------------------------------------------------------
    def featurize(self, examples: list[Example], progress: bool = True) -> list[Rendered]:
        return [self.prompt.render(example) for example in examples]

    def collate(self, items: list[Rendered]) -> ClozeBatch:
        return self.readout.batch(items)

    # -- forward: label scores --------------------------------------------------------------
    def forward(self, batch: ClozeBatch) -> torch.Tensor:
        """Label scores [B, C]; calibrated (in eval mode) when asked."""
        scores = self.uncalibrated_scores(batch)
        if self.config.calibrate and not self.training:
            scores = scores.float().log_softmax(dim=-1) - self.content_free_log_probs()
        return scores

    def uncalibrated_scores(self, batch: ClozeBatch) -> torch.Tensor:
        return self.readout.scores(self.hidden_states(batch), batch)

    def hidden_states(self, batch: ClozeBatch) -> torch.Tensor:
        """The body's last hidden states [rows, T, H] (after the final norm), fed by the input."""
        inputs = self.input.body_inputs(self.model, batch)
        return self.backbone.body(**inputs, **self.lm.body_arguments).last_hidden_state

    def content_free_log_probs(self) -> torch.Tensor:
        """log p(label | content-free input), averaged over the inputs in probability space; cached
        until the weights may change."""
        if self._content_free is None:
            rendered = [self.prompt.render(Example(text, text)) for text in CONTENT_FREE]
            with torch.no_grad():
                scores = self.uncalibrated_scores(self.collate(rendered).to(self.device))
            self._content_free = scores.float().softmax(dim=-1).mean(dim=0).log()
        return self._content_free

    def forget_calibration(self) -> None:
        self._content_free = None

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.forget_calibration()  # training changes the weights the calibration was measured with
        return self

    # -- what trains and what is saved ----------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"head": trainable(self.readout.parameters()), "prompt": trainable(self.input.parameters()),
                **body_groups(self.model)}

    def finalize(self) -> None:
        self.trained_parameters = self.trainable_parameter_count()
        self.input.materialize()

    def trainable_parameter_count(self) -> int:
        return self.trained_parameters if self.trained_parameters is not None else super().trainable_parameter_count()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.forget_calibration()
        own = {name for name, p in self.named_parameters() if p.requires_grad}
        if own - set(state):  # no encoder weights: a saved run's materialised prompt
            self.input.materialize()
        super().load_trainable_state_dict(state)
