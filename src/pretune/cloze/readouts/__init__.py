"""Readouts: how label scores are read off the body's hidden states of a rendered prompt.

A readout is an `nn.Module` (its parameters, if any, train as the method's head) with

    slot            the attribute a cloze method holds it under (it names the saved weights)
    calibratable    whether contextual calibration applies to its scores
    batch(rendered) the rows and targets to run for a list of rendered examples (see `lm`)
    scores(hidden, batch)  label scores [B, C] from the body's last hidden states [rows, T, H]

- `verbalizer`  the label words' log-probabilities at the mask, combined per label (PET);
- `head`        a linear or MLP head on the hidden state where the answer is read (P-tuning's option);
- `vocabulary`  logits over the whole vocabulary there (knowledge probing, `pretune.probe`).

A new readout is one module here with such a class, plus one entry in `READOUTS` when a
classification task can use it.
"""

from __future__ import annotations

from .head import HeadReadout
from .verbalizer import VerbalizerReadout
from .vocabulary import VocabularyReadout

# The readouts a classification task's cloze method offers. `VocabularyReadout` scores every token
# of the vocabulary (its labels are token ids, not a task's labels): knowledge probing uses it.
READOUTS = {"verbalizer": VerbalizerReadout, "head": HeadReadout}


def build_readout(name: str, prompt, lm, backbone, task, config):
    """The readout `name` for a bound prompt; each readout takes what it needs from its arguments."""
    return READOUTS[name](prompt, lm, backbone, task, config)


__all__ = ["READOUTS", "HeadReadout", "VerbalizerReadout", "VocabularyReadout", "build_readout"]
