"""Every option of `pretune train` reaches what it names.

Two tables. OPTIONS: each option, given on the command line with a value other than its default,
must land in the run's configuration (RunConfig, its TrainConfig, the method options) with that
value; a test checks the table covers every option the parser has, so a new option cannot go
untested. REACH: the options that shape a method, each built into a real (tiny) method and its
effect checked there. What the training options do with their values is checked by value in
test_training_values.py and test_cloze_values.py; the data options are checked on files below.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pretune.api import build_method, prepare_task
from pretune.cli import build_parser, run_config_from_args

# option (flags as typed) -> where its value lands, and the value expected there
OPTIONS = [
    (["--task", "some/folder"], "task", "some/folder"),
    (["--split-seed", "13"], "split_seed", 13),
    (["--shots", "4"], "shots", 4),
    (["--text-field", "sentence"], "text_field", "sentence"),
    (["--pair-field", "hypothesis"], "pair_field", "hypothesis"),
    (["--label-field", "gold"], "label_field", "gold"),
    (["--model", "bert-tiny"], "model", "bert-tiny"),
    (["--method", "pet"], "method", "pet"),
    (["--train", "last:2"], "train", "last:2"),
    (["--lora-r", "4"], "lora_r", 4),
    (["--lora-alpha", "12"], "lora_alpha", 12),
    (["--dtype", "bfloat16"], "dtype", "bfloat16"),
    (["--head", "mlp"], "method_options.head", "mlp"),
    (["--hidden", "16"], "method_options.hidden", 16),
    (["--dropout", "0.3"], "method_options.dropout", 0.3),
    (["--pooling", "mean"], "method_options.pooling", "mean"),
    (["--max-length", "40"], "method_options.max_length", 40),
    (["--pattern", "{text} A {mask}.", "--pattern", "{mask}: {text}"], "method_options.patterns", ["{text} A {mask}.", "{mask}: {text}"]),
    (["--verbalizer", "positive=good negative=bad"], "method_options.verbalizer", "positive=good negative=bad"),
    (["--aggregate", "mean"], "method_options.aggregate", "mean"),
    (["--scoring", "channel"], "method_options.scoring", "channel"),
    (["--label-tokens", "learned"], "method_options.label_tokens", "learned"),
    (["--calibrate"], "method_options.calibrate", True),
    (["--unlabelled", "texts.jsonl"], "method_options.unlabelled", "texts.jsonl"),
    (["--aux-lm-weight", "0.25"], "method_options.aux_lm_weight", 0.25),
    (["--ensemble-weighting", "uniform"], "method_options.ensemble_weighting", "uniform"),
    (["--distil"], "method_options.distil", True),
    (["--distil-temperature", "3.5"], "method_options.distil_temperature", 3.5),
    (["--generations", "3"], "method_options.generations", 3),
    (["--generation-growth", "2"], "method_options.generation_growth", 2),
    (["--encoder", "mlp"], "method_options.encoder", "mlp"),
    (["--prompt-length", "5"], "method_options.prompt_length", 5),
    (["--reparam"], "method_options.reparam", True),
    (["--readout", "head"], "method_options.readout", "head"),
    (["--steps", "7"], "training.steps", 7),
    (["--epochs", "2.5"], "training.epochs", 2.5),
    (["--batch-size", "3"], "training.batch_size", 3),
    (["--eval-batch-size", "5"], "training.eval_batch_size", 5),
    (["--grad-accum", "4"], "training.grad_accum", 4),
    (["--lr", "0.02"], "training.lr", 0.02),
    (["--body-lr", "0.0007"], "training.body_lr", 0.0007),
    (["--learning_rate", "0.003"], "training.body_lr", 0.003),  # and --lr: tests/test_cli_habits.py
    (["--weight-decay", "0.3"], "training.weight_decay", 0.3),
    (["--warmup-ratio", "0.25"], "training.warmup_ratio", 0.25),
    (["--max-grad-norm", "0.5"], "training.max_grad_norm", 0.5),
    (["--eval-every", "3"], "training.eval_every", 3),
    (["--patience", "2"], "training.patience", 2),
    (["--eval-start", "no"], "training.eval_start", False),
    (["--seed", "9"], "training.seed", 9),
    (["--device", "cpu"], "training.device", "cpu"),
    (["--checkpoint-every", "6"], "training.checkpoint_every", 6),
    (["--lr-scheduler", "cosine"], "training.lr_scheduler", "cosine"),
    (["--report-to", "tensorboard"], "training.report_to", "tensorboard"),
    # options of the command itself, not of the run's configuration
    (["--out", "runs/x"], "args.out", "runs/x"),
    (["--overwrite"], "args.overwrite", True),
    (["--resume", "runs/y"], "args.resume", "runs/y"),
    (["--quiet"], "args.quiet", True),
]


def parsed(*flags: str):
    args = build_parser().parse_args(["train", *flags])
    return args, run_config_from_args(args)


def lookup(args, config, where: str):
    head, _, rest = where.partition(".")
    if head == "args":
        return getattr(args, rest)
    if head == "method_options":
        return config.method_options.get(rest)
    if head == "training":
        return getattr(config.training, rest)
    return getattr(config, where)


@pytest.mark.parametrize(("flags", "where", "expected"), OPTIONS, ids=[row[0][0] for row in OPTIONS])
def test_option_lands_in_the_run_configuration(flags, where, expected):
    args, config = parsed(*flags)
    assert lookup(args, config, where) == expected
    _, default = parsed()
    default_args, _ = parsed()
    assert lookup(default_args, default, where) != expected, "the table's value must differ from the default"


def test_the_table_covers_every_option_of_train():
    train = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "train" in a.choices).choices["train"]
    # --config reads a file of these same options: tests/test_cli_habits.py
    flags = {action.option_strings[0] for action in train._actions if action.option_strings} - {"-h", "--config"}
    covered = {row[0][0] for row in OPTIONS}
    assert flags == covered, f"options without a row: {sorted(flags - covered)}; rows of no option: {sorted(covered - flags)}"


def test_options_left_out_keep_the_methods_own_defaults():
    _, config = parsed("--method", "pet")
    assert config.method_options == {}  # unset method options never override the method's defaults


# ---------------------------------------------------------------- options that shape the method


def built(backbone, task, *flags: str):
    _, config = parsed(*flags)
    return build_method(config, task, backbone=backbone)


def linear_layers(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_head_mlp_and_hidden_shape_the_head(tiny_encoder, task):
    method = built(tiny_encoder, task, "--method", "head", "--head", "mlp", "--hidden", "16")
    assert linear_layers(method.head) == [(32, 16), (16, 2)]
    linear = built(tiny_encoder, task, "--method", "head")
    assert linear_layers(linear.head) == [(32, 2)]


def test_dropout_reaches_the_head(tiny_encoder, task):
    method = built(tiny_encoder, task, "--method", "head", "--dropout", "0.3")
    assert [m.p for m in method.head.modules() if isinstance(m, nn.Dropout)] == [0.3]


def test_max_length_truncates_the_input(tiny_encoder, task):
    from pretune.data import Example

    method = built(tiny_encoder, task, "--method", "head", "--train", "full", "--max-length", "6")
    items = method.featurize([Example("one two three four five six seven eight nine ten")], progress=False)
    assert len(items[0]["input_ids"]) == 6


@pytest.mark.parametrize(("spec", "trains"), [
    ("bitfit", lambda name: name.endswith("bias")),
    ("last:1", lambda name: "layer.1." in name or "pooler" in name),
    ("full", lambda name: True),
])
def test_train_chooses_which_body_parameters_train(tiny_encoder, task, spec, trains):
    method = built(tiny_encoder, task, "--method", "head", "--train", spec)
    body = dict(method.model.named_parameters())
    assert {n for n, p in body.items() if p.requires_grad} == {n for n in body if trains(n)}


def test_lora_rank_and_alpha_reach_every_adapter(tiny_mlm, task):
    method = built(tiny_mlm, task, "--method", "pet", "--pattern", "{text} It was {mask}.", "--train", "lora",
                   "--lora-r", "4", "--lora-alpha", "12")
    adapters = [m for m in method.model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(adapters) == 4  # query and value of 2 layers
    for layer in adapters:
        assert layer.lora_A["default"].weight.shape[0] == 4 and layer.lora_B["default"].weight.shape[1] == 4
        assert layer.scaling["default"] == pytest.approx(12 / 4)


def test_pattern_and_verbalizer_reach_the_prompt(tiny_mlm, task):
    method = built(tiny_mlm, task, "--method", "pet", "--pattern", "{text} Overall: {mask}.",
                   "--verbalizer", "positive=good,fine negative=bad")
    assert method.prompt.pattern.source == "{text} Overall: {mask}."
    assert dict(method.prompt.verbalizer.words) == {"negative": ("bad",), "positive": ("good", "fine")}


def test_scoring_channel_scores_only_the_text_after_the_word(tiny_causal, task):
    pattern = ("--method", "pet", "--pattern", "It was {mask}. {text}", "--verbalizer", "positive=great negative=bad")
    direct, channel = built(tiny_causal, task, *pattern), built(tiny_causal, task, *pattern, "--scoring", "channel")
    items = direct.featurize(task.test[:1])
    one_token_words = 2
    # tests/test_channel.py checks the channel scores by value
    assert len(channel.collate(items).target_token) == len(direct.collate(items).target_token) - one_token_words


def test_label_tokens_learned_adds_trainable_label_rows(tiny_mlm, task):
    pattern = ("--method", "pet", "--pattern", "{text} It was {mask}.", "--verbalizer", "positive=great negative=bad")
    fixed, learned = built(tiny_mlm, task, *pattern), built(tiny_mlm, task, *pattern, "--label-tokens", "learned")
    assert "verbalizer.label_rows.weight" not in dict(fixed.named_parameters())
    # tests/test_label_tokens.py checks what the rows score and how they train
    assert learned.readout.label_rows.weight.shape == (2, 32) and learned.readout.label_rows.weight.requires_grad


def test_calibrate_changes_the_evaluation_scores(tiny_mlm, task):
    plain = built(tiny_mlm, task, "--method", "pet", "--pattern", "{text} It was {mask}.")
    calibrated = built(tiny_mlm, task, "--method", "pet", "--pattern", "{text} It was {mask}.", "--calibrate")
    a = plain.label_scores(task.test).log_softmax(-1)
    b = calibrated.label_scores(task.test).log_softmax(-1)
    shift = b - a  # calibration subtracts one content-free log-probability per label
    assert shift.abs().max() > 1e-4
    assert torch.allclose(shift[:, 1] - shift[:, 0], (shift[:, 1] - shift[:, 0])[0].expand(len(task.test)), atol=1e-5)


@pytest.mark.parametrize(("encoder", "has_lstm"), [("lstm", True), ("mlp", False)])
def test_encoder_chooses_the_prompt_encoder(tiny_mlm, task, encoder, has_lstm):
    method = built(tiny_mlm, task, "--method", "ptuning", "--encoder", encoder)
    assert any(isinstance(m, nn.LSTM) for m in method.modules()) == has_lstm


def test_encoder_none_trains_the_soft_token_embeddings_alone(tiny_mlm, task):
    method = built(tiny_mlm, task, "--method", "ptuning", "--encoder", "none", "--prompt-length", "3")
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 3 * 32  # three soft tokens of the hidden size


def test_prompt_length_sets_the_deep_prefix_length(tiny_mlm, task):
    method = built(tiny_mlm, task, "--method", "deep-prompt", "--prompt-length", "3")
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    assert trainable == 3 * 2 * 2 * 32  # 3 vectors x (key, value) x 2 layers x hidden 32


def test_reparam_trains_the_prefix_through_an_mlp(tiny_mlm, task):
    plain = built(tiny_mlm, task, "--method", "deep-prompt", "--prompt-length", "3")
    reparam = built(tiny_mlm, task, "--method", "deep-prompt", "--prompt-length", "3", "--reparam")
    assert not linear_layers(plain) or all(not p.requires_grad for m in plain.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    assert any(p.requires_grad for m in reparam.modules() if isinstance(m, nn.Linear) for p in m.parameters())


def test_readout_head_reads_a_head_at_the_mask(tiny_mlm, task):
    method = built(tiny_mlm, task, "--method", "ptuning", "--readout", "head")
    trainable_linear = [m for m in method.modules() if isinstance(m, nn.Linear) and m.out_features == 2 and m.weight.requires_grad]
    assert trainable_linear


# ---------------------------------------------------------------- data options


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_text_pair_and_label_fields_name_the_columns_read(tmp_path):
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": "yes" if i % 2 else "no", "text": "wrong"} for i in range(6)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    _, config = parsed("--task", str(tmp_path / "data.jsonl"), "--text-field", "premise", "--pair-field", "hypothesis",
                       "--label-field", "gold")
    task = prepare_task(config)
    assert [(e.text, e.text_pair, e.label) for e in task.train] == [(r["premise"], r["hypothesis"], r["gold"]) for r in rows]
    assert sorted(task.labels) == ["no", "yes"]


def test_split_seed_picks_the_split_folder(tmp_path):
    (tmp_path / "task.json").write_text(json.dumps({"task": "t", "labels": ["a", "b"], "metric": "accuracy"}))
    for seed in (13, 42):
        write_jsonl(tmp_path / f"16-{seed}" / "train.jsonl", [{"text": f"seed {seed} {i}", "label": "ab"[i % 2]} for i in range(4)])
    _, config = parsed("--task", str(tmp_path), "--split-seed", "13")
    assert {e.text.split()[1] for e in prepare_task(config).train} == {"13"}
    _, default = parsed("--task", str(tmp_path))
    assert {e.text.split()[1] for e in prepare_task(default).train} == {"42"}


def test_shots_samples_k_per_class_for_train_and_dev(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(40)])
    _, config = parsed("--task", str(tmp_path / "data.jsonl"), "--shots", "3", "--split-seed", "5")
    task = prepare_task(config)
    for split in (task.train, task.dev):
        assert sorted(e.label for e in split) == ["a"] * 3 + ["b"] * 3
    assert not {e.text for e in task.train} & {e.text for e in task.dev}
    _, other = parsed("--task", str(tmp_path / "data.jsonl"), "--shots", "3", "--split-seed", "6")
    assert {e.text for e in prepare_task(other).train} != {e.text for e in task.train}
