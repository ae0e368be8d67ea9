"""Prompts: pattern-verbalizer pairs, the built-in ones of the shared benchmark tasks, how a run's
prompts are chosen, and a prompt bound to a model's tokenizer (`BoundPrompt`).

Masked LMs get the manual templates and label words of LM-BFF (Gao et al. 2021, Table 1) and
PET (Schick & Schuetze 2021); the first of each list is LM-BFF's. A causal LM reads left to right,
so its adaptations end with the mask and name the answer it should continue with; the first of
each list is the one preferred for a causal LM (for SST-2 it is the pattern the design guide
measured best zero-shot on smollm2-135m). Keys are task names as in task.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..data import Example, Task
from ..errors import UserError
from .pattern import Pattern, PatternRenderer, Rendered
from .verbalizer import Verbalizer, tokenize_label_words

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """A pattern-verbalizer pair (PET's PVP)."""

    pattern: Pattern
    verbalizer: Verbalizer


_SENTIMENT = "positive=great negative=terrible"
_FIVE_WAY = "very negative=terrible; negative=bad; neutral=okay; positive=good; very positive=great"

# task -> model kind -> ((pattern, verbalizer), ...)
BUILT_IN: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "sst-2": {
        "mlm": (("{text} It was {mask}.", _SENTIMENT), ("{text} All in all, it was {mask}.", _SENTIMENT)),
        "causal": (
            ("Review: {text}\nSentiment: {mask}", "positive=positive negative=negative"),
            ("{text} All in all, the movie was {mask}", "positive=good negative=bad"),
            ("{text} It was {mask}", _SENTIMENT),
        ),
    },
    "sst-5": {
        "mlm": (("{text} It was {mask}.", _FIVE_WAY),),
        "causal": (("Review: {text}\nThe movie was {mask}", _FIVE_WAY),),
    },
    "mr": {
        "mlm": (("{text} It was {mask}.", _SENTIMENT), ("{text} All in all, it was {mask}.", _SENTIMENT)),
        "causal": (
            ("Review: {text}\nSentiment: {mask}", "positive=positive negative=negative"),
            ("{text} All in all, the movie was {mask}", "positive=good negative=bad"),
        ),
    },
    "subj": {
        "mlm": (("{text} This is {mask}.", "subjective=subjective objective=objective"),),
        "causal": (("Sentence: {text}\nIs this an opinion or a fact? {mask}", "subjective=opinion objective=fact"),),
    },
    "trec": {
        "mlm": (
            (
                "{mask}: {text}",
                "description=description entity=entity abbreviation=expression human=human "
                "location=location number=number",
            ),
        ),
        "causal": (
            (
                "Question: {text}\nThe answer is a {mask}",
                "description=description entity=thing abbreviation=abbreviation human=person "
                "location=place number=number",
            ),
        ),
    },
    "rte": {
        "mlm": (("{text} ? {mask} , {text_pair}", "entailment=yes not_entailment=no"),),
        "causal": (("{text}\nQuestion: {text_pair} True or false?\nAnswer: {mask}", "entailment=true not_entailment=false"),),
    },
    "qnli": {
        "mlm": (("{text} ? {mask} , {text_pair}", "entailment=yes not_entailment=no"),),
        "causal": (
            (
                "Question: {text}\nSentence: {text_pair}\nDoes the sentence answer the question? {mask}",
                "entailment=yes not_entailment=no",
            ),
        ),
    },
    "mrpc": {
        "mlm": (("{text} {mask} , {text_pair}", "equivalent=yes not_equivalent=no"),),
        "causal": (
            (
                "Sentence 1: {text}\nSentence 2: {text_pair}\nDo both sentences mean the same thing? {mask}",
                "equivalent=yes not_equivalent=no",
            ),
        ),
    },
    "cola": {
        "mlm": (("{text} This is {mask}.", "acceptable=correct unacceptable=incorrect"),),
        "causal": (("Sentence: {text}\nIs this sentence grammatical? {mask}", "acceptable=yes unacceptable=no"),),
    },
}


def built_in_prompts(task_name: str, kind: str) -> list[Prompt]:
    """The built-in pattern-verbalizer pairs of a task for a kind of LM (empty when there are none)."""
    pairs = BUILT_IN.get(task_name, {}).get(kind, ())
    return [Prompt(Pattern.parse(p), Verbalizer.parse(v)) for p, v in pairs]


def resolve_prompts(patterns: list[str], verbalizer: str | None, task: Task, kind: str) -> list[Prompt]:
    """The prompts of a run: the user's patterns (or the task's first built-in one), each with the
    user's verbalizer, else the built-in one, else the label names themselves."""
    built_in = built_in_prompts(task.name, kind)
    if patterns:
        parsed = [Pattern.parse(p) for p in patterns]
    elif built_in:
        parsed = [built_in[0].pattern]
    else:
        raise UserError(f"no built-in pattern for task '{task.name}': give one with --pattern, e.g. '{{text}} It was {{mask}}.', or --pattern auto")
    if verbalizer:
        words = Verbalizer.parse(verbalizer).for_labels(task.labels)
        return [Prompt(pattern, words) for pattern in parsed]
    return [Prompt(pattern, _default_verbalizer(pattern, built_in, task)) for pattern in parsed]


def _default_verbalizer(pattern: Pattern, built_in: list[Prompt], task: Task) -> Verbalizer:
    """The built-in pattern's own words, else the task's first built-in words, else the label names."""
    same = [p.verbalizer for p in built_in if p.pattern.source == pattern.source]
    if same or built_in:
        return (same or [built_in[0].verbalizer])[0].for_labels(task.labels)
    words = Verbalizer.from_label_names(task.labels)
    log.info("verbalizer: the label names (%s); give --verbalizer to choose words", words)
    return words


# P-tuning's built-in templates: the task's PET pattern (its anchor words) with soft tokens in front.
PTUNING_SOFT_TOKENS = 4


def ptuning_template(pattern: Pattern) -> Pattern:
    """P-tuning's default template for a task: its PET pattern with soft tokens in front."""
    return Pattern.parse(f"[P*{PTUNING_SOFT_TOKENS}]" + pattern.source)


# ---------------------------------------------------------------- a prompt bound to a model


class BoundPrompt:
    """A prompt bound to a tokenizer and an LM kind: renders examples, and holds its label words' token ids."""

    def __init__(self, prompt: Prompt, tokenizer, lm, max_length: int):
        self.prompt = prompt
        self.max_length = max_length
        self.renderer = PatternRenderer(prompt.pattern, tokenizer, closing_special_tokens=lm.closing_special_tokens)
        self.words = tokenize_label_words(
            prompt.verbalizer, self.renderer.encode, prompt.pattern.mask.lead, tokenizer.unk_token_id
        )
        self.word_labels = torch.tensor(self.words.labels)
        lm.check_pattern(prompt.pattern, self.renderer)

    @property
    def pattern(self) -> Pattern:
        return self.prompt.pattern

    @property
    def verbalizer(self) -> Verbalizer:
        return self.prompt.verbalizer

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


def fitting_length(configured: int, backbone, taken: int = 0) -> int:
    """The longest input: the configured limit, capped by what the tokenizer and the position
    embeddings allow once `taken` positions (a deep prompt's prefix) are spoken for."""
    limits = [configured + taken, getattr(backbone.tokenizer, "model_max_length", None)]
    limits.append(getattr(backbone.model.config.get_text_config(), "max_position_embeddings", None))
    return min(limit for limit in limits if isinstance(limit, int) and limit > 0) - taken
