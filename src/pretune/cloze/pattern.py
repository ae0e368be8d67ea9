"""The pattern language: how an example is posed as a cloze question, and how it becomes token ids.

A pattern is literal text with placeholders:

    {text}  {text_pair}   the example's fields
    {mask}                where the label word goes (exactly one)
    [P]  [P*3]  [P:great] soft tokens for P-tuning: one, three, or one initialised from a word
    {{  }}  [[  ]]        literal braces and brackets

    "{text} It was {mask}."     "{text} ? {mask} , {text_pair}"     "Review: {text}\\nSentiment: {mask}"

Parsing needs no model, so a bad pattern fails before anything loads. Rendering works on token
ids: each piece is tokenized on its own, so that truncation can shorten the fields (longest
first) and never touches the mask, the soft tokens or the pattern's own words.

The spaces in front of a field or of the mask belong to that piece, not to the literal before
it: in "It was {mask}" the label word is tokenized as " great", the way a BPE or SentencePiece
vocabulary sees a word that follows a space. Newlines stay with the literal, since those
vocabularies keep a newline as a token of its own. A soft token is a whole token, its space
included (`[P:great]` starts as " great"), so the spaces before it are dropped: in
"It [P] [P] {mask}" they would otherwise add tokens of their own to a BPE rendering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..errors import UserError
from ..validation import MAX_SOFT_TOKENS

FIELDS = ("text", "text_pair")
LEADING_SPACE = " \t"  # the whitespace that moves from a literal onto the field or mask after it

# One alternative per token of the language; anything else (a lone "[", "Paris]") is literal text.
_TOKEN = re.compile(
    r"(?P<escape>\{\{|\}\}|\[\[|\]\])"
    r"|\{(?P<name>[^{}]*)\}"
    r"|\[P(?:\*(?P<count>\d+)|:(?P<init>[^\[\]]+))?\]"
    r"|(?P<brace>[{}])"
)


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Field:
    name: str  # text | text_pair
    lead: str = ""  # the spaces before it in the pattern


@dataclass(frozen=True)
class Mask:
    lead: str = ""


@dataclass(frozen=True)
class Soft:
    """Trainable continuous tokens (P-tuning); `init` names a word whose embedding starts them."""

    count: int = 1
    init: str | None = None


Segment = Literal | Field | Mask | Soft


@dataclass(frozen=True)
class Pattern:
    source: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, source: str) -> Pattern:
        """Parse and validate a pattern; one clear line naming the pattern on any mistake."""
        if not isinstance(source, str) or not source.strip():
            raise UserError("empty pattern: write one like '{text} It was {mask}.'")
        segments = _attach_leading_spaces(_tokenize(source))
        pattern = cls(source, tuple(segments))
        pattern._validate()
        return pattern

    def _validate(self) -> None:
        masks = sum(isinstance(s, Mask) for s in self.segments)
        if masks != 1:
            problem = "has no {mask}" if masks == 0 else f"has {masks} {{mask}}s"
            raise UserError(f"pattern '{self.source}' {problem}: exactly one is needed")
        if not self.fields:
            raise UserError(f"pattern '{self.source}' uses no field: add {{text}} (and {{text_pair}} for pairs)")

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the pattern uses, in order of first use."""
        return tuple(dict.fromkeys(s.name for s in self.segments if isinstance(s, Field)))

    @property
    def mask(self) -> Mask:
        return next(s for s in self.segments if isinstance(s, Mask))

    @property
    def soft_tokens(self) -> tuple[Soft, ...]:
        return tuple(s for s in self.segments if isinstance(s, Soft))

    @property
    def soft_token_count(self) -> int:
        return sum(s.count for s in self.soft_tokens)

    @property
    def ends_with_mask(self) -> bool:
        """True when nothing but whitespace follows the mask (a causal LM then scores the next token)."""
        after = self.segments[self.segments.index(self.mask) + 1 :]
        return all(isinstance(s, Literal) and not s.text.strip() for s in after)

    def __str__(self) -> str:
        return self.source


def _tokenize(source: str) -> list[Segment]:
    segments: list[Segment] = []
    position = 0
    for match in _TOKEN.finditer(source):
        if match.start() > position:
            segments.append(Literal(source[position : match.start()]))
        segments.append(_segment(match, source))
        position = match.end()
    if position < len(source):
        segments.append(Literal(source[position:]))
    return _merge_literals(segments)


def _segment(match: re.Match, source: str) -> Segment:
    if match.group("escape"):
        return Literal(match.group("escape")[0])
    if match.group("brace"):
        column = match.start() + 1
        raise UserError(
            f"pattern '{source}': unmatched '{match.group('brace')}' at column {column} "
            "(write {{ or }} for a literal brace)"
        )
    if match.group("name") is not None:
        name = match.group("name").strip()
        if name == "mask":
            return Mask()
        if name in FIELDS:
            return Field(name)
        raise UserError(f"pattern '{source}': unknown field {{{name}}} (known: {{text}}, {{text_pair}}, {{mask}})")
    if match.group("init") is not None:
        word = match.group("init").strip()
        if not word:
            raise UserError(f"pattern '{source}': [P:] needs a word to start from, as in [P:great]")
        return Soft(1, word)
    count = int(match.group("count") or 1)
    if count < 1:
        raise UserError(f"pattern '{source}': [P*{count}] needs at least one soft token")
    if count > MAX_SOFT_TOKENS:
        raise UserError(f"pattern '{source}': [P*{count}] asks for more than {MAX_SOFT_TOKENS} soft tokens")
    return Soft(count)


def _merge_literals(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring literals (an escape splits one) so each literal is tokenized whole."""
    merged: list[Segment] = []
    for segment in segments:
        if isinstance(segment, Literal) and merged and isinstance(merged[-1], Literal):
            merged[-1] = Literal(merged[-1].text + segment.text)
        else:
            merged.append(segment)
    return merged


def _attach_leading_spaces(segments: list[Segment]) -> list[Segment]:
    """Move the spaces that end a literal onto the field or mask that follows it; drop those before
    a soft token."""
    result: list[Segment] = []
    for segment in segments:
        if isinstance(segment, (Field, Mask, Soft)) and result and isinstance(result[-1], Literal):
            text = result[-1].text
            kept = text.rstrip(LEADING_SPACE)
            lead = text[len(kept) :]
            result[-1:] = [Literal(kept)] if kept else []
            if not isinstance(segment, Soft):
                segment = replace(segment, lead=lead)
        result.append(segment)
    return result


# ---------------------------------------------------------------- rendering on token ids


@dataclass
class Rendered:
    """An example rendered through a pattern, split at the mask.

    The caller puts what it needs between `prefix` and `suffix`: N mask tokens (masked LM) or a
    label word's tokens (causal LM). Soft tokens hold a placeholder id; their indices are listed
    so that P-tuning can replace their embeddings.
    """

    prefix: list[int]
    suffix: list[int]
    soft_in_prefix: list[int] = field(default_factory=list)
    soft_in_suffix: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prefix) + len(self.suffix)


class PatternRenderer:
    """A pattern bound to a tokenizer: renders examples to token ids within a length budget."""

    def __init__(self, pattern: Pattern, tokenizer, closing_special_tokens: bool = True):
        self.pattern = pattern
        self.tokenizer = tokenizer
        self.opening, closing = special_tokens_around(tokenizer)
        # A causal LM predicts what follows the mask; an end-of-text marker after it would be
        # scored as part of every label, so causal callers leave it out.
        self.closing = closing if closing_special_tokens else []
        self.placeholder_id = _placeholder_id(tokenizer)
        self._literal_ids = {s.text: self.encode(s.text) for s in pattern.segments if isinstance(s, Literal)}

    def literal_ids(self, literal: Literal) -> list[int]:
        """The token ids of one of the pattern's literals (tokenized once, on its own)."""
        return list(self._literal_ids[literal.text])

    def encode(self, text: str) -> list[int]:
        """Token ids of a piece of text, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @property
    def fixed_length(self) -> int:
        """Tokens every rendering has whatever the example: special tokens, literals, soft tokens."""
        literals = sum(len(self._literal_ids[s.text]) for s in self.pattern.segments if isinstance(s, Literal))
        return len(self.opening) + len(self.closing) + literals + self.pattern.soft_token_count

    def render(self, values: dict[str, str], max_length: int, reserved: int = 0) -> Rendered:
        """Render field values so that the result plus `reserved` tokens (what goes in place of the
        mask) fits in `max_length`; only the fields are cut, the longest first, from their ends."""
        fields = [s for s in self.pattern.segments if isinstance(s, Field)]
        field_ids = [self._encode_field(s, values[s.name]) for s in fields]
        available = max_length - reserved - self.fixed_length
        if available < 0:
            raise UserError(
                f"pattern '{self.pattern}' needs {self.fixed_length + reserved} tokens without its fields, "
                f"more than max_length {max_length}"
            )
        kept = fit_lengths([len(ids) for ids in field_ids], available)
        field_ids = [ids[:n] for ids, n in zip(field_ids, kept)]
        return self._assemble(field_ids)

    def _encode_field(self, segment: Field, value: str) -> list[int]:
        text = value.strip()
        return self.encode(segment.lead + text) if text else []  # an empty field adds no lone space

    def _assemble(self, field_ids: list[list[int]]) -> Rendered:
        parts: dict[str, list[int]] = {"prefix": list(self.opening), "suffix": []}
        soft: dict[str, list[int]] = {"prefix": [], "suffix": []}
        side, next_field = "prefix", iter(field_ids)
        for segment in self.pattern.segments:
            if isinstance(segment, Mask):
                side = "suffix"
            elif isinstance(segment, Literal):
                parts[side] += self._literal_ids[segment.text]
            elif isinstance(segment, Field):
                parts[side] += next(next_field)
            else:
                start = len(parts[side])
                soft[side] += range(start, start + segment.count)
                parts[side] += [self.placeholder_id] * segment.count
        parts["suffix"] += self.closing
        return Rendered(parts["prefix"], parts["suffix"], soft["prefix"], soft["suffix"])


def fit_lengths(lengths: list[int], available: int) -> list[int]:
    """New lengths whose sum is at most `available`, cutting the longest first (ties alike)."""
    lengths = list(lengths)
    excess = sum(lengths) - max(available, 0)
    while excess > 0:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        runner_up = max((n for i, n in enumerate(lengths) if i != longest), default=0)
        cut = min(excess, max(1, lengths[longest] - runner_up))
        lengths[longest] -= cut
        excess -= cut
    return lengths


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] ... [SEP],
    <bos> ..., or nothing), found by probing it: its own template, whatever the model family."""
    probe = "probe"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise UserError(f"cannot tell which special tokens {type(tokenizer).__name__} adds around a text")


def _placeholder_id(tokenizer) -> int:
    """The id a soft token holds until P-tuning replaces its embedding."""
    for candidate in (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0
