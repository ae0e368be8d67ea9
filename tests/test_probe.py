"""Knowledge probing (`pretune probe`): relation prompts, the fact reader, the open-vocabulary
readout on tiny random models, and bert-tiny end to end on two small relations."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from conftest import _tiny
from pretune.backbones import load_backbone
from pretune.cli import main
from pretune.cloze.pattern import Pattern
from pretune.errors import UserError
from pretune.probe.facts import Fact, read_facts, require_single_token, single_token_facts
from pretune.probe.prober import Prober, ProbeSetup
from pretune.probe.relations import LAMA_TEMPLATES, REPHRASED, anchored_from, manual_prompt, soft_template
from pretune.probe.runner import ProbeConfig, prompts_for
from pretune.probe.training import TrainSettings, precision_at_1, train_prompt
from pretune.runs import load_weights

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"),
            ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Norway", "Oslo"), ("Ireland", "Dublin")]
LANGUAGES = [("Victor Hugo", "French"), ("Dante Alighieri", "Italian"), ("Goethe", "German"),
             ("Cervantes", "Spanish"), ("Pushkin", "Russian"), ("Mishima", "Japanese"),
             ("Homer", "Greek"), ("Chopin", "Polish"), ("Ibsen", "Norwegian"), ("Joyce", "English")]


@functools.cache
def tiny(kind: str):
    """A tiny random model per kind, built once for this module (the probes never change its weights)."""
    return _tiny(kind, "bert-tiny" if kind == "mlm" else "smollm2-135m")


def write_relation(root, relation, pairs):
    folder = root / relation
    folder.mkdir(parents=True)
    rows = "".join(json.dumps({"sub_label": s, "obj_label": o, "predicate_id": relation}) + "\n" for s, o in pairs)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.jsonl").write_text(rows)


@pytest.fixture
def lama(tmp_path):
    """Two small relations in LAMA's layout (train = dev = test: the prompt can learn them)."""
    root = tmp_path / "trex"
    write_relation(root, "P36", CAPITALS)  # "The capital of [X] is [Y] ."
    write_relation(root, "P103", LANGUAGES)  # "The native language of [X] is [Y] ."
    return root


# ---------------------------------------------------------------- relation prompts


def test_every_relation_has_a_masked_and_a_causal_prompt():
    assert len(LAMA_TEMPLATES) == 41
    for relation in LAMA_TEMPLATES:
        masked, causal = Pattern.parse(manual_prompt(relation, "mlm")), Pattern.parse(manual_prompt(relation, "causal"))
        assert masked.fields == causal.fields == ("text",)
        assert causal.ends_with_mask, relation
    assert manual_prompt("P19", "mlm") == "{text} was born in {mask} ."
    assert manual_prompt("P19", "causal") == "{text} was born in {mask}"
    assert manual_prompt("P27", "causal") == REPHRASED["P27"]  # LAMA's "[X] is [Y] citizen ." goes on after [Y]


def test_templates_for_ptuning():
    assert soft_template("causal") == "[P*3] {text} [P*3] {mask}"
    assert Pattern.parse(soft_template("mlm")).soft_token_count == 9
    assert anchored_from("{text} was born in {mask} .") == "{text} [P:was] [P:born] [P:in] {mask} ."
    ptuning = ProbeConfig(data="", model="", method="ptuning")
    assert prompts_for("P19", ptuning, "causal") == ["[P*3] {text} [P*3] {mask}"]
    ptuning.init = "manual"
    assert prompts_for("P19", ptuning, "causal") == ["{text} [P:was] [P:born] [P:in] {mask}"]
    ptuning.variants = True  # one template per wording, each started from it
    assert prompts_for("P19", ptuning, "mlm")[1] == "[P:The] [P:birthplace] [P:of] {text} [P:is] {mask} ."


# ---------------------------------------------------------------- facts


def test_a_bad_fact_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sub_label": "A", "obj_label": "B"}\n{"sub_label": "A"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:2: 'obj_label' is missing"):
        read_facts(path)


def test_single_token_filter_keeps_one_token_objects_with_the_leading_space():
    vocabulary = {" Paris": [7], " Ouagadougou": [3, 4, 5]}
    encode = vocabulary.__getitem__
    facts = [Fact("France", "Paris", "P36"), Fact("Burkina Faso", "Ouagadougou", "P36", "x.jsonl:2")]
    kept, dropped = single_token_facts(facts, encode, " ", unk_id=0)
    assert [(f.object, t) for f, t in kept] == [("Paris", 7)] and dropped == 1
    with pytest.raises(UserError, match=r"x.jsonl:2: object 'Ouagadougou' is 3 tokens .* never splits it"):
        require_single_token(facts[1], encode, " ", unk_id=0)


# ---------------------------------------------------------------- the open-vocabulary readout


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_vocabulary_logits_are_the_models_own_at_the_answer_position(kind):
    backbone = tiny(kind)
    prober = Prober(backbone, ProbeSetup(manual_prompt("P36", kind)))
    items = [prober.item(Fact(s, o, "P36"), 5) for s, o in CAPITALS[:3]]
    batch, _ = prober.collate(items)
    with torch.no_grad():
        logits = prober(batch)
        full = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert logits.shape == (3, len(backbone.tokenizer))
    torch.testing.assert_close(logits, full[batch.target_row, batch.target_position], rtol=1e-4, atol=1e-4)
    if kind == "causal":  # the next token after "... is": the last token of the rendered prompt
        assert batch.target_position.tolist() == [len(item["rendered"].prefix) - 1 for item in items]


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_soft_tokens_started_from_the_prompts_words_answer_like_the_manual_prompt(kind):
    backbone = tiny(kind)
    manual = manual_prompt("P19", kind)
    plain = Prober(backbone, ProbeSetup(manual))
    anchored = Prober(backbone, ProbeSetup(anchored_from(manual), "soft", "lstm"))
    facts = [Fact(s, o, "P19") for s, o in CAPITALS[:4]]
    with torch.no_grad():
        expected = plain(plain.collate([plain.item(f, 1) for f in facts])[0])
        got = anchored(anchored.collate([anchored.item(f, 1) for f in facts])[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", [pytest.param("mlm", marks=pytest.mark.slow), "causal"])
def test_deep_prompt_trains_only_its_prefix_and_learns_a_small_relation(kind):
    """A prefix learns an answer that is always the same (on the real bert-tiny: a random BERT's
    near-uniform output barely moves; on a random Llama it does)."""
    backbone = load_backbone("bert-tiny") if kind == "mlm" else tiny(kind)
    prober = Prober(backbone, ProbeSetup(manual_prompt("P36", kind), "prefix", prefix_length=4))
    encode, lead = prober.encode, prober.answer_lead
    facts = [Fact(country, "Paris", "P36") for country, _ in CAPITALS]
    kept, _ = single_token_facts(facts, encode, lead, backbone.tokenizer.unk_token_id)
    items = [prober.item(f, t) for f, t in kept]
    body = {name: p.clone() for name, p in backbone.model.named_parameters()}
    outcome = train_prompt(prober, items, items, TrainSettings(epochs=15, batch_size=8, lr=5e-2, patience=15), progress=False)
    assert all(torch.equal(p, body[name]) for name, p in backbone.model.named_parameters())  # body frozen
    assert outcome.curve[0][1] < max(score for _, score in outcome.curve)  # it learned something
    assert precision_at_1(prober, items, 4) == max(score for _, score in outcome.curve)  # the best state is kept


def test_a_causal_pattern_must_end_with_the_mask():
    backbone = tiny("causal")
    with pytest.raises(UserError, match="must end with {mask}"):
        Prober(backbone, ProbeSetup("{text} is {mask} citizen ."))


# ---------------------------------------------------------------- the command, on bert-tiny


@pytest.mark.slow
def test_a_multi_token_object_is_refused_with_one_line(tmp_path, capsys):
    root = tmp_path / "trex"
    write_relation(root, "P36", CAPITALS[:3] + [("Burkina Faso", "Ouagadougou")])
    code = main(["probe", "--data", str(root), "--model", "bert-tiny", "--out", str(tmp_path / "out"),
                 "--multi-token", "error", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and "object 'Ouagadougou' is" in error and "P36/train.jsonl:4" in error
    assert not (tmp_path / "out" / "results.json").exists()  # nothing that looks like a finished probe


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pet", "ptuning"])
def test_bert_tiny_probes_two_relations_end_to_end_and_resumes(lama, tmp_path, capsys, method):
    out = tmp_path / method
    argv = ["probe", "--data", str(lama), "--model", "bert-tiny", "--method", method, "--out", str(out),
            "--epochs", "3", "--quiet"]
    assert main(argv) == 0
    assert "macro P@1" in capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    assert summary["relations_with_test"] == 2 and summary["missing"] == []
    rows = {r["relation"]: r for r in summary["relations"]}
    assert rows["P36"]["test_kept"] == rows["P36"]["test_total"] == len(CAPITALS)  # capitals are one WordPiece
    assert summary["macro_p_at_1"] == pytest.approx(sum(r["test_p_at_1"] for r in rows.values()) / 2)
    assert (out / "results.md").is_file() and (out / "plots" / "P36.png").is_file() and (out / "p_at_1.png").is_file()
    run = json.loads((out / "relations" / "P103.json").read_text())["runs"][0]
    if method == "pet":  # the manual prompt: nothing trains, nothing is saved
        assert run["steps"] == run["adapter_bytes"] == run["trained_parameters"] == 0
    else:
        assert run["steps"] > 0 and run["adapter_bytes"] > 0 and run["trained_parameters"] > 0
    stamp = (out / "relations" / "P36.json").stat().st_mtime_ns
    assert main(argv) == 0  # resumed: finished relations are not run again
    assert (out / "relations" / "P36.json").stat().st_mtime_ns == stamp
    assert main(argv[:-1] + ["--epochs", "4", "--quiet"]) == 2  # other options: refused, not mixed in
    assert "other options (settings)" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--method", "head"], "unknown --method 'head' (choose one of pet, ptuning, deep-prompt)"),
    (["--multi-token", "split"], "unknown --multi-token 'split'"),
    (["--relations", "P36,P999"], "--relations: P999 not in"),
    (["--data", "/nonexistent/trex"], "--data /nonexistent/trex: no such folder"),
    (["--out", "{taken}"], "exists and is not a probe folder"),
    ([], "model not found: /nonexistent/model"),
])
def test_bad_probe_options_fail_with_one_line_before_any_model_loads(lama, tmp_path, capsys, options, message):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    argv = ["probe", "--data", str(lama), "--model", "/nonexistent/model", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv + [o.replace("{taken}", str(taken)) for o in options]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
    assert (taken / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()  # nothing half-made to trip a later run


@pytest.mark.slow
def test_a_relation_trains_the_same_alone_or_after_others(lama, tmp_path):
    """Random soft tokens depend on the seed alone: a resumed or partial probe gives the same record."""
    def probe(relations, out):
        argv = ["probe", "--data", str(lama), "--model", "bert-tiny", "--method", "ptuning", "--relations", relations,
                "--out", str(tmp_path / out), "--epochs", "2", "--quiet"]
        assert main(argv) == 0
        return load_weights(tmp_path / out / "adapters" / "P103-0.safetensors")

    after_another = probe("P36,P103", "both")
    torch.rand(7)  # whatever the global generator holds now must not matter
    alone = probe("P103", "alone")
    assert after_another.keys() == alone.keys()
    assert all(torch.equal(after_another[name], alone[name]) for name in alone)
