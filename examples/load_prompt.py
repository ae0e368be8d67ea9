"""Label probabilities from a pretune export, without pretune: plain torch and transformers.

    python examples/load_prompt.py EXPORT_DIR "a gorgeous, witty film" "a dull, lifeless mess"

EXPORT_DIR is what `pretune export RUN --format peft|transformers|prompt --out EXPORT_DIR` wrote:
pretune_prompt.json beside the weights (its keys: src/pretune/export/prompt_file.py). Each label
word is scored in place of the mask, a word's score being the sum of its tokens' log-probabilities;
a label's words combine as the run did (logsumexp, mean or max). Inputs are not truncated: keep
them within the prompt's max_length, as pretune would cut the longest field first.
"""

import inspect
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, DynamicCache


def load(folder):
    """(model, tokenizer, prompt, trained tensors) of an export folder."""
    folder = Path(folder)
    prompt = json.loads((folder / "pretune_prompt.json").read_text())
    weights = folder if (folder / "config.json").is_file() else prompt["model"]["source"]
    auto = AutoModelForMaskedLM if prompt["kind"] == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(weights, dtype=torch.float32)
    if (folder / "adapter_config.json").is_file():  # a LoRA adapter on the base model
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
    soft = folder / "soft_prompt.safetensors"
    return model.eval(), AutoTokenizer.from_pretrained(weights), prompt, load_file(soft) if soft.is_file() else {}


def render(prompt, tokenizer, text, pair=None):
    """Token ids before and after the mask, and which of them are soft tokens."""
    values, sides, side = {"text": text, "text_pair": pair}, {"before": ([], []), "after": ([], [])}, "before"
    for piece in prompt["template"]:
        if "mask" in piece:
            side = "after"
            continue
        if "tokens" in piece:
            ids = piece["tokens"]
        elif "field" in piece:
            value = (values[piece["field"]] or "").strip()
            ids = tokenizer(piece["lead"] + value, add_special_tokens=False)["input_ids"] if value else []
        else:
            ids = [prompt["placeholder_id"]] * piece["soft"]
        sides[side][0].extend(ids)
        sides[side][1].extend(["soft" in piece] * len(ids))
    return sides["before"], sides["after"]


def logits(model, trained, tokens, soft):
    ids = torch.tensor([tokens])
    inputs = {"attention_mask": torch.ones_like(ids)}
    if "soft_prompt" in trained:  # P-tuning / prompt tuning: trained embeddings at the soft positions
        embeds = model.get_input_embeddings()(ids)
        embeds[0, torch.tensor(soft)] = trained["soft_prompt"].to(embeds.dtype)
        inputs["inputs_embeds"] = embeds
    else:
        inputs["input_ids"] = ids
    if "prefix" in trained:  # deep prompt: trained keys and values in front of every layer's own
        prefix = trained["prefix"]  # [layers, 2, heads, length, head_dim]
        cache = DynamicCache([(kv[0][None], kv[1][None]) for kv in prefix], config=model.config)
        body = model.get_base_model() if hasattr(model, "get_base_model") else model
        name = "cache" if "cache" in inspect.signature(body.base_model.forward).parameters else "past_key_values"
        inputs[name] = cache
        inputs["attention_mask"] = torch.ones(1, prefix.shape[3] + len(tokens), dtype=torch.long)
    return model(**inputs).logits[0].float()


def word_score(model, prompt, trained, before, after, ids):
    (prefix, prefix_soft), (suffix, suffix_soft) = before, after
    if prompt["kind"] == "mlm":  # the word's tokens at as many masks
        tokens = prefix + [prompt["mask_token_id"]] * len(ids) + suffix
        read = [(len(prefix) + k, token) for k, token in enumerate(ids)]
    else:  # the word and all that follows it, each token from the position before
        sequence = prefix + list(ids) + suffix
        tokens, read = sequence[:-1], [(p - 1, sequence[p]) for p in range(len(prefix), len(sequence))]
    soft = (prefix_soft + [False] * len(ids) + suffix_soft)[: len(tokens)]
    log_probs = logits(model, trained, tokens, soft).log_softmax(-1)
    return sum(log_probs[position, token] for position, token in read)


@torch.no_grad()
def label_probabilities(model, tokenizer, prompt, trained, text, pair=None):
    """{label: probability} for one text (and its pair)."""
    before, after = render(prompt, tokenizer, text, pair)
    words = [word_score(model, prompt, trained, before, after, w["ids"]) for w in prompt["label_words"]]
    combine = {"logsumexp": lambda s: s.logsumexp(0), "mean": lambda s: s.mean(), "max": lambda s: s.max()}
    scores = torch.stack([combine[prompt["aggregate"]](torch.stack(
        [s for s, w in zip(words, prompt["label_words"]) if w["label"] == label])) for label in prompt["labels"]])
    if prompt["calibration"] is not None:  # contextual calibration, as the run predicted
        scores = scores.log_softmax(0) - torch.tensor(prompt["calibration"])
    return dict(zip(prompt["labels"], scores.softmax(0).tolist()))


if __name__ == "__main__":
    model, tokenizer, prompt, trained = load(sys.argv[1])
    for text in sys.argv[2:]:
        print(json.dumps({"text": text, "probabilities": label_probabilities(model, tokenizer, prompt, trained, text)}))
