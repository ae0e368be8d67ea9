"""`--pattern auto`, `--verbalizer auto`, and a task without a built-in prompt: the prompt search
(`cloze.search`) turns them into a concrete pattern, words and calibration before the method is
built, so that a saved run holds what was chosen (and predicts without searching again)."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..cloze.label_rows import FIXED
from ..cloze.pattern import Pattern
from ..cloze.prompt import BUILT_IN, ptuning_template
from ..cloze.search import SearchResult, search_prompt
from ..data import Task
from ..errors import UserError
from .cloze import AUTO, ClozeConfig

log = logging.getLogger("pretune")


def wants_search(config, task: Task) -> bool:
    """Whether a method's configuration leaves its prompt to the search."""
    if not isinstance(config, ClozeConfig):
        return False
    no_built_in = not config.patterns and task.name not in BUILT_IN
    return config.patterns == [AUTO] or config.verbalizer == AUTO or no_built_in


def searched(config: ClozeConfig, task: Task, backbone, calibrate_given: bool = False,
             progress: bool = True) -> tuple[ClozeConfig, SearchResult | None]:
    """The config with the search's choices in place of `auto` (unchanged when nothing is left to search)."""
    if not wants_search(config, task):
        return config, None
    if not task.train and not task.dev:
        raise UserError(f"task '{task.name}' has no built-in prompt and no labelled examples to choose one with: "
                        "give --pattern and --verbalizer")
    given = [p for p in config.patterns if p != AUTO]
    user_patterns = list(given)  # --verbalizer auto beside patterns: they all stay, the words are searched
    if not given and config.patterns != [AUTO] and task.name in BUILT_IN:
        given = [BUILT_IN[task.name][backbone.kind][0][0]]  # --verbalizer auto alone: the built-in pattern
    words = None if config.verbalizer in (None, AUTO) else config.verbalizer
    result = search_prompt(
        backbone, task, patterns=given or None, words=words, find_words=words is None,
        calibrate=config.calibrate if calibrate_given else None, how=config.aggregate,
        # Learned label rows train one prompt's words: an ensemble's members would each need their own.
        ensemble=config.input == "pattern" and not config.distil and not user_patterns and config.label_tokens == FIXED,
        max_length=config.max_length, progress=progress,
    )
    patterns = user_patterns or result.patterns
    if config.input == "soft" and not config.prompt_length and not user_patterns:
        patterns = [ptuning_template(Pattern.parse(p)).source for p in patterns]  # P-tuning's soft tokens in front
    result.patterns = patterns  # what the run uses (the user's patterns stay; P-tuning's soft tokens shown)
    log.info("prompt search chose: pattern %s, words %s, calibrate %s (%s)",
             " + ".join(repr(p) for p in patterns), result.verbalizer, result.calibrate, result.reason)
    return replace(config, patterns=patterns, verbalizer=result.verbalizer, calibrate=result.calibrate), result
