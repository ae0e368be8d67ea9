"""pretune_prompt.json: everything needed to turn a model's outputs back into label scores, without pretune.

Every export writes it beside the weights. Its keys:

    format            "pretune-prompt/1"
    kind              "mlm" (read the answer at mask tokens) | "causal" (the answer is the next tokens)
    labels            the task's label names, in score order
    pattern           the cloze pattern as written ("{text} It was {mask}.")
    verbalizer        {label: [words]}
    aggregate         how a label's word scores combine: logsumexp | mean | max
    template          the pattern as token ids, piece by piece, special tokens included:
                        {"tokens": [ids]}              fixed tokens (literals, [CLS], <bos>, [SEP])
                        {"field": "text", "lead": " "} the example's text (or text_pair), stripped,
                                                       tokenized as lead + text without special tokens
                                                       (an empty field adds nothing)
                        {"mask": true}                 where the label word goes
                        {"soft": n}                    n trained soft tokens (see `input`)
    label_words       [{"label", "word", "ids"}]: each word's token ids as they follow the mask
    mask_token_id     the masked LM's mask token (null for a causal LM)
    placeholder_id    the id a soft token holds before its embedding is replaced
    max_length        the longest input pretune feeds the model (it cuts the longest field first)
    calibration       null, or the log-probabilities to subtract from the label log-probabilities
                      (contextual calibration, measured on content-free inputs after training)
    input             "pattern" | "soft" (soft_prompt.safetensors: "soft_prompt" [n, hidden]) |
                      "prefix" (soft_prompt.safetensors: "prefix" [layers, 2, heads, length, head_dim])
    model             {"spec", "source"}: the base model, as given and as resolved

A word's score is the sum of its tokens' log-probabilities: a masked LM reads prefix + N masks + suffix
(N the word's length); a causal LM reads prefix + word + suffix and scores the word's tokens and every
token after it, each from the position before. See examples/load_prompt.py.
"""

from __future__ import annotations

from ..cloze.pattern import Field, Literal, Mask

FORMAT = "pretune-prompt/1"
NAME = "pretune_prompt.json"


def describe_prompt(method, model_source: dict) -> dict:
    """The pretune_prompt.json mapping of a cloze method (one prompt, verbalizer readout)."""
    bound = method.prompt
    renderer = bound.renderer
    template = [{"tokens": list(renderer.opening)}] if renderer.opening else []
    for segment in bound.pattern.segments:
        if isinstance(segment, Literal):
            template.append({"tokens": renderer.literal_ids(segment)})
        elif isinstance(segment, Field):
            template.append({"field": segment.name, "lead": segment.lead})
        elif isinstance(segment, Mask):
            template.append({"mask": True})
        else:
            template.append({"soft": segment.count})
    if renderer.closing:
        template.append({"tokens": list(renderer.closing)})
    words = bound.words
    labels = method.task.labels
    calibration = method.content_free_log_probs().tolist() if method.config.calibrate else None
    return {
        "format": FORMAT,
        "kind": method.lm.name,
        "labels": labels,
        "pattern": bound.pattern.source,
        "verbalizer": {label: list(w) for label, w in bound.verbalizer.words.items()},
        "aggregate": method.config.aggregate,
        "template": template,
        "label_words": [{"label": labels[label], "word": word, "ids": list(ids)}
                        for word, ids, label in zip(words.words, words.token_ids, words.labels)],
        "mask_token_id": getattr(method.lm, "mask_id", None),
        "placeholder_id": renderer.placeholder_id,
        "max_length": bound.max_length,
        "calibration": calibration,
        "input": method.config.input,
        "model": {"spec": model_source.get("spec"), "source": model_source.get("source")},
    }
