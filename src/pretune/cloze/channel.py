"""Noisy-channel scoring (Min et al. 2022, "Noisy Channel Language Model Prompting for Few-Shot Text
Classification"): a causal LM scores each label by how likely the text is after its label word,
log P(text | label), instead of how likely the word is after the text.

The user's pattern puts the mask before the text; the causal layout (`lm.CausalLM`) already reads
a row prefix + word + suffix. Direct scoring sums the log-probabilities of the word's tokens and of
the suffix's; channel scoring sums the suffix's alone, so the word's own probability (the label's
prior, as the model sees it) is left out:

    "A {mask} review: {text}"   direct:  log P(word | "A") + log P(" review: <text>" | "A", word)
                                channel:                    log P(" review: <text>" | "A", word)

That is the only difference: the rows, the scorer and the readout are the same. `--pattern auto`,
the built-in patterns and the prompt search stay direct (their patterns end with the mask).
"""

from __future__ import annotations

from ..backbones import Backbone
from ..errors import UserError
from .lm import CausalLM, LanguageModel, language_model
from .pattern import Field, Pattern, Rendered

DIRECT, CHANNEL = "direct", "channel"
SCORINGS = (DIRECT, CHANNEL)
EXAMPLE_PATTERN = "It was {mask}. {text}"  # what the refusals suggest


class ChannelLM(CausalLM):
    """The causal layout scoring only the text after the label word (the cloze config has checked
    that the pattern puts text there: `require_text_after_mask`)."""

    def __init__(self, backbone: Backbone):
        if backbone.kind != "causal":
            raise UserError(f"--scoring channel needs a causal LM; model '{backbone.name}' is a masked LM "
                            "(leave --scoring direct)")
        super().__init__(backbone)

    @staticmethod
    def first_scored(rendered: Rendered, word: tuple[int, ...]) -> int:
        # The label is scored by the suffix's log-probabilities summed, as Min et al. do, with no
        # length normalisation: every label scores the same suffix, so its length favours none.
        return len(rendered.prefix) + len(word)


def require_text_after_mask(pattern: Pattern) -> None:
    """Refuse a pattern whose mask no field follows: channel scoring has no text to score given the label."""
    after_mask = pattern.segments[pattern.segments.index(pattern.mask) + 1 :]
    if not any(isinstance(s, Field) for s in after_mask):
        raise UserError(f"pattern '{pattern}' has no text after {{mask}}: --scoring channel scores the text given "
                        f"the label word, so put {{mask}} before the text, e.g. '{EXAMPLE_PATTERN}'")


def scored_language_model(backbone: Backbone, scoring: str) -> LanguageModel:
    """The LM layout for a scoring: the model kind's own (direct), or the channel one (causal LMs only)."""
    lm = language_model(backbone)  # refuses a model without an LM head before anything else
    return ChannelLM(backbone) if scoring == CHANNEL else lm
