"""Manual prompts for the 41 LAMA T-REx relations, written as pretune patterns.

The masked-LM prompt of each relation is LAMA's own template (facebookresearch/LAMA,
`data/relations.jsonl`, read through a public copy of that file), `[X]` as `{text}` and `[Y]` as
`{mask}`. A causal LM reads the object as the next token, so its prompt must end with the mask:
where LAMA's template ends with `[Y] .` the causal prompt is the same words without the final
period; the six templates with words after `[Y]` (P27, P106, P136, P140, P190, P413) get a rephrasing
that ends with it (`REPHRASED` names them, so reports can say so).

`VARIANTS` holds, for a few relations with a test set, several wordings of the same question: the
spread of precision@1 across them is how fragile a manual prompt is (the P-tuning paper's Table 1).
Each variant ends with the mask, so it serves both kinds of model (a masked LM gets it with " .").
"""

from __future__ import annotations

from ..cloze.pattern import Field, Literal, Pattern
from ..errors import UserError

# relation: (LAMA's template as a pattern, its label in Wikidata)
LAMA_TEMPLATES: dict[str, tuple[str, str]] = {
    "P1001": ("{text} is a legal term in {mask} .", "applies to jurisdiction"),
    "P101": ("{text} works in the field of {mask} .", "field of work"),
    "P103": ("The native language of {text} is {mask} .", "native language"),
    "P106": ("{text} is a {mask} by profession .", "occupation"),
    "P108": ("{text} works for {mask} .", "employer"),
    "P127": ("{text} is owned by {mask} .", "owned by"),
    "P1303": ("{text} plays {mask} .", "instrument"),
    "P131": ("{text} is located in {mask} .", "located in the administrative territorial entity"),
    "P136": ("{text} plays {mask} music .", "genre"),
    "P1376": ("{text} is the capital of {mask} .", "capital of"),
    "P138": ("{text} is named after {mask} .", "named after"),
    "P140": ("{text} is affiliated with the {mask} religion .", "religion"),
    "P1412": ("{text} used to communicate in {mask} .", "languages spoken, written or signed"),
    "P159": ("The headquarter of {text} is in {mask} .", "headquarters location"),
    "P17": ("{text} is located in {mask} .", "country"),
    "P176": ("{text} is produced by {mask} .", "manufacturer"),
    "P178": ("{text} is developed by {mask} .", "developer"),
    "P19": ("{text} was born in {mask} .", "place of birth"),
    "P190": ("{text} and {mask} are twin cities .", "twinned administrative body"),
    "P20": ("{text} died in {mask} .", "place of death"),
    "P264": ("{text} is represented by music label {mask} .", "record label"),
    "P27": ("{text} is {mask} citizen .", "country of citizenship"),
    "P276": ("{text} is located in {mask} .", "location"),
    "P279": ("{text} is a subclass of {mask} .", "subclass of"),
    "P30": ("{text} is located in {mask} .", "continent"),
    "P31": ("{text} is a {mask} .", "instance of"),
    "P36": ("The capital of {text} is {mask} .", "capital"),
    "P361": ("{text} is part of {mask} .", "part of"),
    "P364": ("The original language of {text} is {mask} .", "original language of film or TV show"),
    "P37": ("The official language of {text} is {mask} .", "official language"),
    "P39": ("{text} has the position of {mask} .", "position held"),
    "P407": ("{text} was written in {mask} .", "language of work or name"),
    "P413": ("{text} plays in {mask} position .", "position played on team / speciality"),
    "P449": ("{text} was originally aired on {mask} .", "original network"),
    "P463": ("{text} is a member of {mask} .", "member of"),
    "P47": ("{text} shares border with {mask} .", "shares border with"),
    "P495": ("{text} was created in {mask} .", "country of origin"),
    "P527": ("{text} consists of {mask} .", "has part"),
    "P530": ("{text} maintains diplomatic relations with {mask} .", "diplomatic relation"),
    "P740": ("{text} was founded in {mask} .", "location of formation"),
    "P937": ("{text} used to work in {mask} .", "work location"),
}

# Causal prompts for the templates that go on after [Y]: our rephrasings, not LAMA's.
REPHRASED: dict[str, str] = {
    "P106": "{text} works as a {mask}",
    "P136": "{text} plays music of the genre {mask}",
    "P140": "{text} is affiliated with the religion of {mask}",
    "P190": "{text} is a twin city of {mask}",
    "P27": "{text} is a citizen of {mask}",
    "P413": "{text} plays in the position of {mask}",
}

# Several wordings of one question (ours, the first is LAMA's), for the spread across manual prompts.
VARIANTS: dict[str, tuple[str, ...]] = {
    "P19": ("{text} was born in {mask}", "The birthplace of {text} is {mask}", "{text} is a native of {mask}"),
    "P20": ("{text} died in {mask}", "The place of death of {text} is {mask}", "{text} passed away in {mask}"),
    "P103": ("The native language of {text} is {mask}", "The mother tongue of {text} is {mask}",
             "{text} grew up speaking {mask}"),
    "P407": ("{text} was written in {mask}", "The language of {text} is {mask}", "{text} is a work in {mask}"),
}

KINDS = ("mlm", "causal")


def relation_names() -> list[str]:
    return list(LAMA_TEMPLATES)


def manual_prompt(relation: str, kind: str) -> str:
    """The manual prompt of a relation for a masked (`mlm`) or causal LM."""
    template = _template(relation)
    if kind == "mlm":
        return template
    if relation in REPHRASED:
        return REPHRASED[relation]
    return template.removesuffix(" .")


def variant_prompts(relation: str, kind: str) -> list[str]:
    """The relation's wordings for the spread across prompts (none for most relations)."""
    ending = " ." if kind == "mlm" else ""
    return [variant + ending for variant in VARIANTS.get(relation, ())]


def soft_template(kind: str, count: int = 3) -> str:
    """P-tuning's LAMA template: soft tokens around the subject, before the mask (and after it for
    a masked LM), with no words of our own (the paper's (3, 3, 3) shape; a causal LM drops the last)."""
    tokens = f"[P*{count}]"
    return f"{tokens} {{text}} {tokens} {{mask}}" + (f" {tokens}" if kind == "mlm" else "")


def anchored_from(prompt: str) -> str:
    """A P-tuning template that starts as the manual prompt: each of its words becomes a soft token
    initialised from that word (`[P:born]`), the subject and mask stay; punctuation stays literal."""
    pattern = Pattern.parse(prompt)
    parts = []
    for segment in pattern.segments:
        if isinstance(segment, Literal):
            parts += [f"[P:{word}]" if word.isalpha() else word for word in segment.text.split()]
        else:
            parts.append(f"{{{segment.name}}}" if isinstance(segment, Field) else "{mask}")
    return " ".join(parts)


def _template(relation: str) -> str:
    if relation not in LAMA_TEMPLATES:
        raise UserError(f"relation '{relation}' has no manual prompt (known: {', '.join(LAMA_TEMPLATES)})")
    return LAMA_TEMPLATES[relation][0]
