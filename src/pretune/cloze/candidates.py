"""Candidates for an automatic prompt: generic patterns any task can use, and label words.

Patterns. A small library of generic templates, for single texts and for text pairs, for masked
and causal LMs: plain cloze lines ("{text} It was {mask}."), label-name questions that list the
task's labels ("Is it a, b or c?"), instruction-style lines for instruct models, and for pairs
LM-BFF's "X ? {mask} , Y". The task's built-in prompts join them where they exist. Nothing here
names a task: the templates hold for any classification of one text or of a pair, since they
only ask the LM to name a category of the text. A candidate is kept only if it can hold the text
(`holds_text`): a causal LM reads left to right, so it must end with the mask; a pair task needs
both fields, a single-text task only {text}; and its own words must leave room for the text.

Label words. The label names themselves where they are words, plus words found by the model
(LM-BFF's automatic label words, PETAL's likelihood criterion): for each label, the whole
vocabulary words whose log-probability at the mask rises most on that label's examples relative
to the others, among the words the LM finds likely there at all. Only whole words count: a
vocabulary entry that is one token when written after the mask's whitespace, letters only, at
least two of them (no subword piece, punctuation or number), so a found word reads as a word.
"""

from __future__ import annotations

import re

import torch

from ..data import Task
from ..errors import UserError
from .pattern import Pattern
from .prompt import built_in_prompts
from .verbalizer import Verbalizer

# {labels}: the task's label names as words, "a, b or c" (label-name questions).
SINGLE = {
    "mlm": (
        "{text} It was {mask}.",
        "{text} This is {mask}.",
        "{text} In short, it is {mask}.",
        "{mask}: {text}",
        "Category: {mask}. {text}",
        "{text} Is it {labels}? {mask}.",
    ),
    "causal": (
        "{text} It was {mask}",
        "{text}\nIn one word, this is {mask}",
        "Text: {text}\nCategory: {mask}",
        "Text: {text}\nIs it {labels}?\nAnswer: {mask}",
        "Classify the text as {labels}.\nText: {text}\nAnswer: {mask}",
    ),
}
PAIR = {
    "mlm": (
        "{text} ? {mask} , {text_pair}",
        "{text} . {mask} , {text_pair}",
        "{text} Question: {text_pair} ? Answer: {mask} .",
        "{text} {text_pair} Is it {labels}? {mask}.",
    ),
    "causal": (
        "{text}\nQuestion: {text_pair}\nAnswer: {mask}",
        "{text}\nQuestion: {text_pair} Yes or no?\nAnswer: {mask}",
        "Sentence 1: {text}\nSentence 2: {text_pair}\nRelation: {mask}",
        "Sentence 1: {text}\nSentence 2: {text_pair}\nIs it {labels}?\nAnswer: {mask}",
    ),
}
MIN_WORD_LETTERS = 2
LIKELY_WORDS = 100  # a found word must be among the words the LM finds most likely for the label
WORDS_PER_LABEL = 3  # the longest found verbalizer (the shortest is one word a label)


def label_words_text(task: Task) -> str | None:
    """The label names as words for a question, "a, b or c"; None when some name is not a word."""
    names = [re.sub(r"[_-]+", " ", label).strip() for label in task.labels]
    if not all(re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", name) for name in names):
        return None
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def pattern_candidates(task: Task, kind: str) -> list[tuple[str, str]]:
    """(pattern, where it comes from) for a task and LM kind: built-ins first, then the library;
    only patterns that can hold the task's texts."""
    out = [(p.pattern.source, "built-in") for p in built_in_prompts(task.name, kind)]
    names = label_words_text(task)
    escaped = names.replace("{", "{{").replace("}", "}}").replace("[", "[[").replace("]", "]]") if names else None
    for template in (PAIR if task.has_pairs else SINGLE)[kind]:
        if "{labels}" in template:
            if escaped is None:
                continue
            template = template.replace("{labels}", escaped)
        out.append((template, "library"))
    seen, kept = set(), []
    for source, origin in out:
        if source not in seen and holds_text(Pattern.parse(source), task, kind):
            seen.add(source)
            kept.append((source, origin))
    return kept


def holds_text(pattern: Pattern, task: Task, kind: str) -> bool:
    """Whether a pattern can pose this task's examples: a causal LM's ends with the mask (it reads
    left to right); a pair task's uses both texts, a single task's only {text}; no soft tokens."""
    fields = set(pattern.fields)
    wanted = {"text", "text_pair"} if task.has_pairs else {"text"}
    if fields != wanted or pattern.soft_tokens:
        return False
    return kind != "causal" or pattern.ends_with_mask


def fixed_verbalizers(task: Task, kind: str, given: str | None) -> list[tuple[Verbalizer, str]]:
    """Label words that need no model: the user's, else the built-in ones and the label names (where they are words)."""
    if given:
        return [(Verbalizer.parse(given).for_labels(task.labels), "given")]
    out = [(p.verbalizer.for_labels(task.labels), "built-in") for p in built_in_prompts(task.name, kind)]
    if label_words_text(task) is not None:
        out.append((Verbalizer.from_label_names(task.labels), "label names"))
    unique: dict[str, tuple[Verbalizer, str]] = {}
    for words, origin in out:
        unique.setdefault(str(words), (words, origin))
    return list(unique.values())


# ---------------------------------------------------------------- words found by the model


_WHOLE_WORDS: dict[tuple, tuple[tuple[int, ...], tuple[str, ...]]] = {}


def _whole_words_cached(tokenizer, lead: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    # Keyed by the tokenizer's files and size, not the object: a model loaded again reuses the list.
    key = (type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), lead)
    if key not in _WHOLE_WORDS:
        _WHOLE_WORDS[key] = _find_whole_words(tokenizer, lead)
    return _WHOLE_WORDS[key]


def _find_whole_words(tokenizer, lead: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    vocabulary = tokenizer.get_vocab()
    ids = sorted(vocabulary.values())
    texts = [text.strip() for text in tokenizer.batch_decode([[i] for i in ids])]
    plausible = [(i, t) for i, t in zip(ids, texts) if len(t) >= MIN_WORD_LETTERS and t.isalpha()]
    if not plausible:
        return (), ()
    encoded = tokenizer([lead + t for _, t in plausible], add_special_tokens=False)["input_ids"]
    kept = [(i, t) for (i, t), e in zip(plausible, encoded) if list(e) == [i]]
    return tuple(i for i, _ in kept), tuple(t for _, t in kept)


def whole_words(tokenizer, lead: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Token ids and texts of the vocabulary's whole words: letters only, and exactly one token
    when written after the mask's whitespace `lead` (a word-start token, never a subword piece)."""
    ids, texts = _whole_words_cached(tokenizer, lead)
    if not ids:
        raise UserError(f"{type(tokenizer).__name__}: no whole words in the vocabulary to search label words in")
    return torch.tensor(ids), texts


def find_label_words(log_probs: torch.Tensor, targets: torch.Tensor, num_labels: int, texts: tuple[str, ...],
                     per_label: int = WORDS_PER_LABEL) -> list[list[str]] | None:
    """For each label, the words (columns of `log_probs` [N, W], texts `texts`) whose mean
    log-probability rises most on that label's examples relative to the other examples', among
    the LIKELY_WORDS the LM finds most likely on that label's examples; a word goes to one label
    only. None when some label has no examples here."""
    means = []
    for label in range(num_labels):
        member = targets == label
        if not member.any() or member.all():
            return None
        means.append((log_probs[member].mean(dim=0), log_probs[~member].mean(dim=0)))
    rise = torch.stack([inside - outside for inside, outside in means])  # [C, W]
    owner = rise.argmax(dim=0)  # each word is a candidate for the label it favours most
    words = []
    for label, (inside, _) in enumerate(means):
        likely = inside.topk(min(LIKELY_WORDS, inside.numel())).indices
        likely = likely[owner[likely] == label]
        if len(likely) == 0:
            return None
        best = likely[rise[label, likely].argsort(descending=True)[:per_label]]
        words.append([texts[i] for i in best.tolist()])
    return words
