import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretune.cloze.pattern import Field, Literal, Mask, Pattern, PatternRenderer, Soft, fit_lengths
from pretune.errors import UserError


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    from pretune.backbones import resolve

    return AutoTokenizer.from_pretrained(resolve("bert-tiny"))


@pytest.fixture(scope="module")
def bpe_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


# ---------------------------------------------------------------- parsing


def test_the_issue_patterns_parse_into_fields_literals_and_one_mask():
    assert Pattern.parse("{text} It was {mask}.").segments == (
        Field("text"), Literal(" It was"), Mask(" "), Literal("."),
    )
    assert Pattern.parse("{text} ? {mask} , {text_pair}").segments == (
        Field("text"), Literal(" ?"), Mask(" "), Literal(" ,"), Field("text_pair", " "),
    )
    review = Pattern.parse("Review: {text}\nSentiment: {mask}")
    assert review.segments == (Literal("Review:"), Field("text", " "), Literal("\nSentiment:"), Mask(" "))
    assert review.fields == ("text",) and review.ends_with_mask


def test_a_newline_before_the_mask_stays_with_the_literal():
    assert Pattern.parse("{text}\n{mask}").segments == (Field("text"), Literal("\n"), Mask(""))


def test_text_after_the_mask_is_detected():
    assert not Pattern.parse("{text} It was {mask}.").ends_with_mask
    assert Pattern.parse("{text} It was {mask}  ").ends_with_mask


@pytest.mark.parametrize(
    "source, message",
    [
        ("{text} It was.", "has no {mask}"),
        ("{mask} {text} {mask}", "has 2 {mask}s"),
        ("{txt} It was {mask}.", "unknown field {txt}"),
        ("It was {mask}.", "uses no field"),
        ("{text} It was {mask", "unmatched '{'"),
        ("{text} } {mask}", "unmatched '}'"),
        ("   ", "empty pattern"),
        ("{text} [P*0] {mask}", "at least one soft token"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_pattern(source, message):
    with pytest.raises(UserError) as error:
        Pattern.parse(source)
    assert message in str(error.value) and "\n" not in str(error.value)
    if source.strip():
        assert source in str(error.value)


def test_soft_tokens_and_escapes():
    pattern = Pattern.parse("[P] {text} [P*3] [P:great] {mask} {{x}} [[P]] [Paris]")
    assert pattern.soft_tokens == (Soft(1), Soft(3), Soft(1, "great"))
    assert pattern.soft_token_count == 5
    assert pattern.segments[-1] == Literal(" {x} [P] [Paris]")


# ---------------------------------------------------------------- rendering


def test_special_tokens_come_from_the_tokenizers_own_template(bert_tokenizer, bpe_tokenizer):
    bert = PatternRenderer(Pattern.parse("{text} It was {mask}."), bert_tokenizer)
    rendered = bert.render({"text": "a fine film"}, max_length=64, reserved=1)
    assert bert_tokenizer.convert_ids_to_tokens(rendered.prefix) == ["[CLS]", "a", "fine", "film", "it", "was"]
    assert bert_tokenizer.convert_ids_to_tokens(rendered.suffix) == [".", "[SEP]"]
    causal = PatternRenderer(Pattern.parse("Review: {text}\nSentiment: {mask}"), bpe_tokenizer, closing_special_tokens=False)
    rendered = causal.render({"text": "a fine film"}, max_length=64, reserved=1)
    # The field takes the pattern's space: " a" is one BPE token, as in running text.
    assert bpe_tokenizer.decode(rendered.prefix) == "Review: a fine film\nSentiment:"
    assert rendered.prefix == bpe_tokenizer("Review: a fine film\nSentiment:")["input_ids"]
    assert rendered.suffix == []


def test_truncation_cuts_the_longest_field_and_never_the_pattern(bpe_tokenizer):
    renderer = PatternRenderer(Pattern.parse("Premise: {text} Hypothesis: {text_pair} Answer: {mask}"), bpe_tokenizer)
    long, short = "word " * 200, "a short hypothesis"
    rendered = renderer.render({"text": long, "text_pair": short}, max_length=40, reserved=2)
    assert len(rendered) + 2 <= 40
    text = bpe_tokenizer.decode(rendered.prefix)
    assert text.startswith("Premise: word") and text.endswith(" Hypothesis: a short hypothesis Answer:")


def test_a_pattern_longer_than_max_length_is_a_user_error(bert_tokenizer):
    renderer = PatternRenderer(Pattern.parse("{text} " + "and so on " * 10 + "{mask}"), bert_tokenizer)
    with pytest.raises(UserError, match="more than max_length 16"):
        renderer.render({"text": "x"}, max_length=16)


def test_soft_token_positions_are_reported_on_both_sides_of_the_mask(bert_tokenizer):
    renderer = PatternRenderer(Pattern.parse("[P*2] {text} {mask} [P]"), bert_tokenizer)
    rendered = renderer.render({"text": "fine"}, max_length=32, reserved=1)
    assert rendered.soft_in_prefix == [1, 2]  # after [CLS]
    assert rendered.soft_in_suffix == [0]
    assert rendered.prefix[1] == renderer.placeholder_id


sentences = st.one_of(
    st.lists(st.sampled_from(["good", "film", "dull", "a", "plot", ",", ".", "wonderfully", "x"]), max_size=300).map(" ".join),
    st.text(max_size=600),  # any characters at all, spaces and newlines included
)


@settings(max_examples=60, deadline=None)
@given(text=sentences, pair=sentences, max_length=st.integers(min_value=24, max_value=120), reserved=st.integers(1, 4))
def test_property_rendering_fits_and_keeps_the_pattern_whatever_the_text(
    bert_tokenizer, bpe_tokenizer, text, pair, max_length, reserved
):
    pattern = Pattern.parse("Question: {text} ? {mask} , {text_pair} Done.")
    for tokenizer in (bert_tokenizer, bpe_tokenizer):
        renderer = PatternRenderer(pattern, tokenizer)
        rendered = renderer.render({"text": text, "text_pair": pair}, max_length, reserved)
        assert len(rendered) + reserved <= max_length
        # The mask survives: the pattern's words sit, whole, right before and after it.
        before, after = renderer.encode(" ?"), renderer.encode(" ,")
        assert rendered.prefix[-len(before) :] == before
        assert rendered.suffix[: len(after)] == after
        assert rendered.suffix[-len(renderer.encode(" Done.")) - len(renderer.closing) :] == (
            renderer.encode(" Done.") + renderer.closing
        )
        assert rendered.prefix[: len(renderer.opening)] == renderer.opening


@given(lengths=st.lists(st.integers(0, 500), min_size=1, max_size=4), available=st.integers(0, 800))
def test_property_fit_lengths_cuts_longest_first(lengths, available):
    kept = fit_lengths(lengths, available)
    assert all(0 <= k <= n for k, n in zip(kept, lengths))
    assert sum(kept) == min(sum(lengths), available)
    cut = [k for k, n in zip(kept, lengths) if k < n]
    if cut:  # every cut field ends at (about) the same length, and no uncut field is longer
        assert max(kept) - min(cut) <= 1
