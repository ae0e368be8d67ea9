from types import SimpleNamespace

import pytest
import torch

from pretune.cloze.lm import language_model
from pretune.cloze.scoring import output_layer
from pretune.cloze.verbalizer import Verbalizer, aggregate, tokenize_label_words
from pretune.errors import UserError


@pytest.fixture(scope="module")
def bpe_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    from pretune.backbones import resolve

    return AutoTokenizer.from_pretrained(resolve("bert-tiny"))


def encoder(tokenizer):
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def test_parse_space_and_semicolon_forms():
    words = Verbalizer.parse("positive=great,good,awesome negative=bad,awful,terrible")
    assert words.words == {"positive": ("great", "good", "awesome"), "negative": ("bad", "awful", "terrible")}
    five = Verbalizer.parse("very negative=terrible; negative=bad; neutral=so so")
    assert five.words == {"very negative": ("terrible",), "negative": ("bad",), "neutral": ("so so",)}
    assert Verbalizer.parse(str(five)) == five and Verbalizer.parse(str(words)) == words


@pytest.mark.parametrize(
    "spec, message",
    [
        ("positive great", "not label=word"),
        ("positive=great,", "empty word"),
        ("positive=good positive=great", "given twice"),
        ("", "^empty verbalizer: write one like 'positive=great negative=terrible'$"),
    ],
)
def test_parse_errors_are_one_line(spec, message):
    with pytest.raises(UserError, match=message):
        Verbalizer.parse(spec)


def test_labels_are_checked_against_the_task_and_put_in_its_order():
    words = Verbalizer.parse("positive=great negative=bad")
    assert list(words.for_labels(["negative", "positive"]).words) == ["negative", "positive"]
    with pytest.raises(UserError, match=r"^verbalizer: unknown label 'positive' \(the task's labels: negative, neutral\)$"):
        words.for_labels(["negative", "neutral"])
    with pytest.raises(UserError, match=r"^verbalizer: no words for label 'neutral' \(add neutral=word\)$"):
        words.for_labels(["negative", "positive", "neutral"])


@pytest.mark.parametrize("source, where", [("good=great,", "verbalizer 'good=great,'"), (None, "verbalizer")])
def test_an_empty_word_is_named_with_the_verbalizer_it_came_from(source, where):
    with pytest.raises(UserError, match=f"^{where}: label 'good' has an empty word$"):
        Verbalizer.from_mapping({"good": ["great", " "]}, source=source)


def test_label_names_as_words():
    assert Verbalizer.from_label_names(["entailment", "not_entailment"]).words == {
        "entailment": ("entailment",), "not_entailment": ("not entailment",),
    }


def test_words_are_tokenized_as_they_occur_after_the_pattern(bpe_tokenizer):
    words = Verbalizer.parse("positive=great,phenomenally negative=bad")
    after_space = tokenize_label_words(words, encoder(bpe_tokenizer), lead=" ")
    assert after_space.token_ids[0] == tuple(encoder(bpe_tokenizer)(" great"))
    assert bpe_tokenizer.convert_ids_to_tokens(list(after_space.token_ids[0])) == ["Ġgreat"]
    assert len(after_space.token_ids[1]) > 1  # a multi-token word is kept, not rejected
    assert after_space.labels == (0, 0, 1) and after_space.max_tokens == len(after_space.token_ids[1])
    glued = tokenize_label_words(words, encoder(bpe_tokenizer), lead="")
    assert glued.token_ids[0] != after_space.token_ids[0]


def test_unknown_and_colliding_words_are_user_errors(bert_tokenizer):
    encode = encoder(bert_tokenizer)
    with pytest.raises(UserError, match="'🦜' of label 'positive' is not in the model's vocabulary"):
        tokenize_label_words(Verbalizer.parse("positive=🦜 negative=bad"), encode, unknown_id=bert_tokenizer.unk_token_id)
    with pytest.raises(UserError, match="'Great' and 'great' have the same tokens"):
        tokenize_label_words(Verbalizer.parse("positive=Great negative=great"), encode)


def test_aggregations():
    scores = torch.log(torch.tensor([[0.1, 0.3, 0.2, 0.05]]))
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(aggregate(scores, labels, 2, "logsumexp").exp(), torch.tensor([[0.4, 0.25]]))
    assert torch.allclose(aggregate(scores, labels, 2, "max").exp(), torch.tensor([[0.3, 0.2]]))
    assert torch.allclose(aggregate(scores, labels, 2, "mean").exp(), torch.tensor([[0.03**0.5, 0.01**0.5]]))
    with pytest.raises(UserError) as refused:
        aggregate(scores, labels, 2, "sum")
    assert str(refused.value) == "unknown aggregation 'sum' (choose one of logsumexp, mean, max)"


def test_a_word_is_everything_after_the_first_equals_sign_and_a_string_is_one_word():
    assert Verbalizer.parse("positive=a=b negative=c").words == {"positive": ("a=b",), "negative": ("c",)}
    assert Verbalizer.from_mapping({"good": "great"}).words == {"good": ("great",)}  # not five letters


def test_a_parsed_verbalizers_errors_quote_it():
    with pytest.raises(UserError, match=r"^verbalizer 'positive=great, negative=bad': label 'positive' has an empty word$"):
        Verbalizer.parse("positive=great, negative=bad")


def test_tokenized_words_keep_their_names_labels_and_label_count_and_take_no_lead_by_default():
    seen = []

    def encode(text):
        seen.append(text)
        return [len(text), len(seen)]

    words = tokenize_label_words(Verbalizer.parse("positive=great,fine negative=bad"), encode)
    assert seen == ["great", "fine", "bad"]
    assert (words.words, words.labels, words.num_labels) == (("great", "fine", "bad"), (0, 0, 1), 2)
    assert words.token_ids == ((5, 1), (4, 2), (3, 3))
    with pytest.raises(UserError, match=r"^verbalizer: word 'bad' of label 'negative' has no tokens$"):
        tokenize_label_words(Verbalizer.parse("positive=great negative=bad"), lambda text: [] if "bad" in text else [1])


def test_a_model_without_a_language_model_head_or_output_layer_is_refused_whole():
    encoder = SimpleNamespace(kind="encoder", name="minilm-l6")
    with pytest.raises(UserError, match=r"^model 'minilm-l6' has no language-model head \(kind encoder\); prompt methods "
                                        r"need a masked or causal LM \(use --method head\)$"):
        language_model(encoder)
    headless = SimpleNamespace(model=SimpleNamespace(get_output_embeddings=lambda: None), name="headless")
    with pytest.raises(UserError, match=r"^model 'headless' exposes no output layer to read label words from$"):
        output_layer(headless)
