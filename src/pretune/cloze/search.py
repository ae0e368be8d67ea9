"""The automatic prompt: score candidate patterns and label words zero-shot, keep the best.

Every candidate pattern reads every labelled example once (plus the content-free inputs of
contextual calibration), in batches, through the label-row scorer: the model's pass gives the
exact log-probability of every fixed candidate word (built-in words, label names) and, from the
one hidden state at the mask, of every whole word of the vocabulary, where the model's own label
words are found (`candidates.find_label_words`). A candidate is a pattern, label words and
calibration on or off; they are compared by one criterion:

    the mean log-loss of the true label over all labelled examples (train + dev)

Why this criterion, on any task: log-loss uses each example's whole probability, not only its
argmax, so it moves smoothly where accuracy on 32 examples jumps 3 points per example; it needs
nothing but labels, so it holds for any number of labels and any metric; it penalises a prompt
that ranks well but is biased towards one label, which is what calibration repairs, so calibration
on or off is chosen by the same number. Words found by the model are chosen on half of the
examples and scored on the other half (two folds, both ways), so they do not win by having seen
the examples they are judged on. The best few patterns are mixed into an ensemble (with the
winner's words and calibration) only when the mixture's log-loss is lower still.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..data import Example, Task
from ..errors import UserError
from .candidates import WORDS_PER_LABEL, find_label_words, fixed_verbalizers, pattern_candidates, whole_words
from .lm import language_model
from .pattern import Pattern, PatternRenderer
from .scoring import LabelWordScorer
from .verbalizer import LabelWords, Verbalizer, aggregate

log = logging.getLogger(__name__)

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al.'s content-free inputs, averaged (as the cloze method's)
MAX_EXAMPLES = 256  # labelled examples a search reads at most (a seeded sample beyond): bounded cost
ENSEMBLE_SIZE = 3
BATCH = 16


@dataclass
class Scored:
    """One candidate and its criterion."""

    pattern: str
    words: str
    origin: str  # where the pattern and words come from
    calibrate: bool
    log_loss: float
    accuracy: float
    members: list[str] = field(default_factory=list)  # an ensemble's patterns


@dataclass
class SearchResult:
    patterns: list[str]
    verbalizer: str
    calibrate: bool
    criterion: str
    examples: int
    seconds: float
    reason: str
    candidates: list[Scored]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Table:
    """One pattern's log-probabilities: fixed words and whole words, labelled examples then content-free rows."""

    pattern: str
    origin: str
    fixed: torch.Tensor  # [N + F, fixed words]
    whole: torch.Tensor  # [N + F, whole words]
    fixed_index: dict[str, int]  # fixed word -> column
    whole_texts: tuple[str, ...]  # whole word of each column (as written after the pattern's mask)

    def __post_init__(self):
        self.whole_index = {text: i for i, text in enumerate(self.whole_texts)}


def search_prompt(backbone: Backbone, task: Task, patterns: list[str] | None = None, words: str | None = None,
                  find_words: bool | None = None, calibrate: bool | None = None, how: str = "logsumexp",
                  ensemble: bool = True, max_length: int = 256, progress: bool = True) -> SearchResult:
    """Choose patterns, label words and calibration for a task. `patterns`: the candidates to choose
    from (None: the library and the built-ins); `words`: fixed label words (None: built-ins, label
    names, and words found by the model unless `find_words` is False); `calibrate`: fixed, or None to choose."""
    find_words = words is None if find_words is None else find_words
    start = time.perf_counter()
    lm = language_model(backbone)
    examples = _labelled(task)
    targets = torch.tensor(task.targets(examples))
    pattern_list = [(p, "given") for p in patterns] if patterns else pattern_candidates(task, lm.name)
    verbalizers = fixed_verbalizers(task, lm.name, words)
    if not verbalizers and not find_words:
        raise UserError("no label words to search: give --verbalizer, or --verbalizer auto")
    tables = _score_patterns(backbone, lm, pattern_list, verbalizers, examples, max_length, progress)
    if not tables:
        raise UserError(f"no candidate pattern can hold the examples of task '{task.name}' within --max-length {max_length}")
    folds = _folds(targets, task.num_labels)
    choices = [False, True] if calibrate is None else [calibrate]
    scored = _rank(tables, verbalizers, find_words, folds, choices, targets, task.labels, how)
    if not scored:
        raise UserError(f"no candidate label words fit the model's vocabulary for task '{task.name}'")
    best, best_folds = scored[0]
    result = [s for s, _ in scored]
    chosen = [best.pattern]
    reason = f"lowest log-loss ({best.log_loss:.4f}) over {len(examples)} labelled examples of {len(result)} candidates"
    if ensemble and len(tables) > 1:
        mixed = _ensemble(tables, best, best_folds, folds, how, task.num_labels, targets)
        if mixed is not None:
            result.append(mixed)
            if mixed.log_loss < best.log_loss:
                chosen = mixed.members
                reason = (f"an ensemble of the {len(chosen)} best patterns with the best words: log-loss "
                          f"{mixed.log_loss:.4f}, below the best single prompt's {best.log_loss:.4f}")
    return SearchResult(chosen, best.words, best.calibrate, "mean log-loss of the true label (train + dev)",
                        len(examples), time.perf_counter() - start, reason, result)


def _rank(tables, verbalizers, find_words, folds, choices, targets, labels, how) -> list[tuple[Scored, dict]]:
    """Every candidate (pattern, words, calibration) with its criterion, best first; with the words by fold."""
    scored = []
    for table in tables:
        options = [(v, {"all": v}, f"{table.origin} pattern, {origin} words") for v, origin in verbalizers]
        if find_words and folds is not None:
            options += _found_words(table, targets, labels, folds)
        for verbalizer, by_fold, origin in options:
            for calibrated in choices:
                log_probs = _cross_fitted(table, by_fold, folds, calibrated, how, len(labels))
                if log_probs is not None:
                    loss, accuracy = _criterion(log_probs, targets)
                    scored.append((Scored(table.pattern, str(verbalizer), origin, calibrated, loss, accuracy), by_fold))
    return sorted(scored, key=lambda pair: pair[0].log_loss)  # stable: ties keep the candidates' order


def _labelled(task: Task) -> list[Example]:
    examples = [e for e in task.train + task.dev if e.label is not None]
    if not examples:
        raise UserError(f"task '{task.name}' has no labelled train or dev examples to choose a prompt with")
    if len(examples) > MAX_EXAMPLES:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0))[:MAX_EXAMPLES]
        examples = [examples[i] for i in sorted(order.tolist())]
    return examples


# ---------------------------------------------------------------- one pass per pattern


def _score_patterns(backbone, lm, patterns, verbalizers, examples, max_length, progress) -> list[_Table]:
    scorer = LabelWordScorer(backbone)
    word_texts = list(dict.fromkeys(w for v, _ in verbalizers for ws in v.words.values() for w in ws))
    inputs = examples + [Example(text, text) for text in CONTENT_FREE]
    total = len(patterns) * ((len(inputs) + BATCH - 1) // BATCH)
    tables = []
    with tqdm(total=total, desc="prompt search", unit="batch", disable=not progress, leave=False) as bar:
        for source, origin in patterns:
            table = _score_pattern(scorer, lm, backbone, Pattern.parse(source), origin, word_texts, inputs,
                                   max_length, bar)
            if table is not None:
                tables.append(table)
    return tables


@torch.inference_mode()
def _score_pattern(scorer, lm, backbone, pattern, origin, word_texts, inputs, max_length, bar):
    renderer = PatternRenderer(pattern, backbone.tokenizer, closing_special_tokens=lm.closing_special_tokens)
    try:
        lm.check_pattern(pattern, renderer)
        whole_ids, whole_texts = whole_words(backbone.tokenizer, pattern.mask.lead)
        words, missing = _fixed_label_words(word_texts, renderer, pattern, backbone.tokenizer, int(whole_ids[0]))
        reserved = max(len(ids) for ids in words.token_ids)
        rendered = [renderer.render({n: e.field(n) or "" for n in pattern.fields}, max_length, reserved) for e in inputs]
    except UserError as error:
        log.info("prompt search: pattern '%s' left out: %s", pattern, error)
        bar.update((len(inputs) + BATCH - 1) // BATCH)
        return None
    fixed, whole = [], []
    device = next(backbone.model.parameters()).device
    for start in range(0, len(rendered), BATCH):
        batch = lm.label_word_batch(rendered[start : start + BATCH], words).to(device)
        hidden = backbone.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               **lm.body_arguments).last_hidden_state
        word_log_probs, all_words = _log_probs(scorer, hidden, batch)
        fixed.append(word_log_probs[:, 1:].float().cpu())
        whole.append(all_words[:, whole_ids.to(device)].float().cpu())
        bar.update(1)
    fixed = torch.cat(fixed)
    fixed[:, missing] = float("-inf")  # words the vocabulary lacks: no label may rest on them
    return _Table(pattern.source, origin, fixed, torch.cat(whole), {t: i for i, t in enumerate(word_texts)}, whole_texts)


def _fixed_label_words(texts, renderer, pattern, tokenizer, anchor: int) -> tuple[LabelWords, list[int]]:
    """The fixed candidate words behind a one-token anchor word (word 0), whose target marks where
    each example's answer is read; and the columns (word index - 1) of words the vocabulary lacks."""
    ids = [(anchor,)]
    for text in texts:
        encoded = tuple(renderer.encode(pattern.mask.lead + text))
        ids.append(encoded if encoded and tokenizer.unk_token_id not in encoded else (anchor,))
    missing = [i - 1 for i in range(1, len(ids)) if ids[i] == (anchor,)]
    return LabelWords(("{anchor}", *texts), tuple(ids), tuple(range(len(ids))), len(ids)), missing


def _log_probs(scorer, hidden, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact log-probabilities [B, W] of the batch's words and [B, V] of every vocabulary entry at the answer.

    The scorer skips the normaliser log Z wherever it is the same for every word (see `scoring`);
    those targets sit at the answer position, so adding back that position's log Z (from the full
    vocabulary there, which the word search needs anyway) makes every word's score exact."""
    words = scorer.word_scores_from_hidden(hidden, batch)  # [B, W]
    anchor = batch.target_slot % batch.num_words == 0
    logits = scorer.vocabulary_logits(hidden[batch.target_row[anchor], batch.target_position[anchor]])
    log_z = logits.logsumexp(dim=-1)
    skipped = torch.zeros(batch.num_examples * batch.num_words, device=hidden.device)
    skipped = skipped.index_add(0, batch.target_slot, (~batch.target_normalize).float()).view(batch.num_examples, -1)
    return words.float() - skipped * log_z.unsqueeze(1), logits - log_z.unsqueeze(1)


# ---------------------------------------------------------------- the criterion


def _folds(targets: torch.Tensor, num_labels: int) -> list[torch.Tensor] | None:
    """Two folds, every label in both (alternate examples of each label); None when a label has fewer than two."""
    fold = torch.zeros(len(targets), dtype=torch.long)
    for label in range(num_labels):
        members = torch.nonzero(targets == label).squeeze(1)
        if len(members) < 2:
            return None
        fold[members[1::2]] = 1
    return [torch.nonzero(fold == f).squeeze(1) for f in (0, 1)]


def _found_words(table, targets, labels, folds):
    """Label words found on each fold and on all examples: one word a label, and WORDS_PER_LABEL."""
    options = []
    for per_label in (1, WORDS_PER_LABEL):
        found = {}
        for name, rows in (("0", folds[0]), ("1", folds[1]), ("all", torch.arange(len(targets)))):
            words = find_label_words(table.whole[rows], targets[rows], len(labels), table.whole_texts, per_label)
            if words is None:
                break
            found[name] = Verbalizer(dict(zip(labels, map(tuple, words))))
        if len(found) == 3:
            options.append((found["all"], found, f"{table.origin} pattern, words found by the model"))
    return options


def _cross_fitted(table, by_fold, folds, calibrate, how, num_labels) -> torch.Tensor | None:
    """log p(label) [N, C] of every labelled example; words found on one fold score the other fold."""
    if len(by_fold) == 1:
        return _label_log_probs(table, by_fold["all"], calibrate, how, num_labels)
    parts = [_label_log_probs(table, by_fold[str(1 - f)], calibrate, how, num_labels) for f in (0, 1)]
    if any(p is None for p in parts):
        return None
    out = torch.empty_like(parts[0])
    for f in (0, 1):
        out[folds[f]] = parts[f][folds[f]]
    return out


def _label_log_probs(table, words, calibrate, how, num_labels) -> torch.Tensor | None:
    columns, labels = _word_columns(table, words)
    if columns is None:
        return None
    scores = aggregate(columns, torch.tensor(labels), num_labels, how)
    if not torch.isfinite(scores).all():
        return None  # some label has no word the model can write
    n = len(scores) - len(CONTENT_FREE)
    log_probs = scores[:n].log_softmax(dim=-1)
    if calibrate:
        content_free = scores[n:].softmax(dim=-1).mean(dim=0).log()
        log_probs = (log_probs - content_free).log_softmax(dim=-1)
    return log_probs


def _word_columns(table: _Table, words: Verbalizer):
    """The columns [N + F, W] of a verbalizer's words and each word's label index; None when a word is in neither table."""
    columns, labels = [], []
    for label, label_words in enumerate(words.words.values()):
        for word in label_words:
            if word in table.fixed_index:
                columns.append(table.fixed[:, table.fixed_index[word]])
            elif word in table.whole_index:
                columns.append(table.whole[:, table.whole_index[word]])
            else:
                return None, None
            labels.append(label)
    return torch.stack(columns, dim=1), labels


def _criterion(log_probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    loss = -log_probs.gather(1, targets.unsqueeze(1)).mean()
    accuracy = (log_probs.argmax(dim=-1) == targets).float().mean()
    return float(loss), float(accuracy)


def _ensemble(tables, best, best_folds, folds, how, num_labels, targets) -> Scored | None:
    """The ENSEMBLE_SIZE best patterns with the winner's words and calibration, their distributions averaged."""
    ranked = []
    for table in tables:
        log_probs = _cross_fitted(table, best_folds, folds, best.calibrate, how, num_labels)
        if log_probs is not None:
            ranked.append((_criterion(log_probs, targets)[0], table.pattern, log_probs))
    ranked.sort(key=lambda r: r[0])
    members = ranked[:ENSEMBLE_SIZE]
    if len(members) < 2:
        return None
    mixture = torch.stack([m[2].exp() for m in members]).mean(dim=0).log()
    loss, accuracy = _criterion(mixture, targets)
    return Scored(members[0][1], best.words, "ensemble", best.calibrate, loss, accuracy, [m[1] for m in members])
