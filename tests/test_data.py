import json

import pytest

from pretune.data import Columns, Example, few_shot_task, load_task, read_examples, sample_k_shot
from pretune.errors import UserError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_csv_tsv_read_the_same_examples(tmp_path):
    jsonl = write(tmp_path / "a.jsonl", '{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n')
    csv = write(tmp_path / "a.csv", 'text,label\n"good, really",pos\nbad,neg\n')
    tsv = write(tmp_path / "a.tsv", "text\tlabel\ngood\tpos\nbad\tneg\n")
    assert [(e.text, e.label) for e in read_examples(jsonl)] == [("good", "pos"), ("bad", "neg")]
    assert [(e.text, e.label) for e in read_examples(csv)] == [("good, really", "pos"), ("bad", "neg")]
    assert [(e.text, e.label) for e in read_examples(tsv)] == [("good", "pos"), ("bad", "neg")]


def test_column_mapping_and_pairs(tmp_path):
    path = write(tmp_path / "pairs.jsonl", '{"premise": "a", "hypothesis": "b", "y": "entailment"}\n')
    [example] = read_examples(path, Columns(text="premise", pair="hypothesis", label="y"))
    assert example == Example("a", "b", "entailment")
    assert example.source.endswith("pairs.jsonl:1")


def test_integer_labels_are_names_and_floats_are_regression(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": 2.5}\n')
    assert [e.label for e in read_examples(path)] == ["1", 2.5]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok", "label": "a"}\n{"text": "broken\n', "bad.jsonl:2: malformed JSON"),
        ('{"txt": "no text column", "label": "a"}\n', "bad.jsonl:1: missing column 'text'"),
        ('{"text": "no label"}\n', "bad.jsonl:1: missing column 'label'"),
        ("[1, 2]\n", "bad.jsonl:1: expected a JSON object"),
        ('{"text": 3, "label": "a"}\n', "column 'text' must be text"),
        ("", "bad.jsonl: no examples in file"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        read_examples(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "caf\xe9", "label": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid UTF-8"):
        read_examples(path)


def test_csv_row_with_wrong_column_count(tmp_path):
    path = write(tmp_path / "bad.csv", "text,label\ngood,pos\nonly-one-cell\n")
    with pytest.raises(UserError, match=r"bad.csv:3: expected 2 columns"):
        read_examples(path)


def test_unsupported_format_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unsupported data format"):
        read_examples(write(tmp_path / "a.txt", "x"))
    with pytest.raises(UserError, match="data file not found"):
        read_examples(tmp_path / "missing.jsonl")


def test_task_folder_labels_from_task_json_and_unknown_label(task_folder):
    task = load_task(str(task_folder))
    assert task.labels == ["negative", "positive"] and task.metric == "accuracy"
    assert len(task.train) == 8 and task.targets(task.train)[:1] == [1]
    with open(task_folder / "dev.jsonl", "a") as stream:
        stream.write(json.dumps({"text": "meh", "label": "neutral"}) + "\n")
    with pytest.raises(UserError, match=r"dev.jsonl:9: unknown label 'neutral' in dev"):
        load_task(str(task_folder))


def test_labels_inferred_from_training_file_and_one_class_refused(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a", "label": "b"}\n{"text": "c", "label": "a"}\n')
    assert load_task(str(path)).labels == ["a", "b"]
    one = write(tmp_path / "one.jsonl", '{"text": "a", "label": "b"}\n{"text": "c", "label": "b"}\n')
    with pytest.raises(UserError, match="one class only"):
        load_task(str(one))


def test_regression_task(tmp_path):
    folder = tmp_path / "sts"
    folder.mkdir()
    write(folder / "task.json", json.dumps({"labels": None, "metric": "pearson"}))
    write(folder / "train.jsonl", '{"text": "a", "text_pair": "b", "label": 3.5}\n{"text": "c", "text_pair": "d", "label": 1}\n')
    task = load_task(str(folder))
    assert task.is_regression and task.num_labels == 1 and task.targets(task.train) == [3.5, 1.0]


def test_few_shot_split_folders_by_seed(tmp_path):
    folder = tmp_path / "fs"
    for seed in (13, 42):
        (folder / f"16-{seed}").mkdir(parents=True)
        write(folder / f"16-{seed}" / "train.jsonl", f'{{"text": "s{seed}", "label": "a"}}\n{{"text": "t", "label": "b"}}\n')
    write(folder / "test.jsonl", '{"text": "x", "label": "a"}\n')
    assert load_task(str(folder)).train[0].text == "s42"  # seed 42 by default
    assert load_task(str(folder), split_seed=13).train[0].text == "s13"
    with pytest.raises(UserError, match="no split for seed 7"):
        load_task(str(folder), split_seed=7)


def test_unknown_task_name():
    with pytest.raises(UserError, match="task not found: no-such-task"):
        load_task("no-such-task")


def test_k_shot_is_balanced_seeded_and_dev_disjoint():
    examples = [Example(f"{label}{i}", label=label) for label in "abc" for i in range(20)]
    first = sample_k_shot(examples, 4, seed=1)
    assert sorted(e.label for e in first) == sorted("aaaabbbbcccc")
    assert first == sample_k_shot(examples, 4, seed=1)
    assert first != sample_k_shot(examples, 4, seed=2)
    from pretune.data import Task

    task = few_shot_task(Task("t", list("abc"), train=examples), k=4, seed=1)
    assert not {e.text for e in task.train} & {e.text for e in task.dev}
    with pytest.raises(UserError, match="only 20 examples of label 'a'"):
        sample_k_shot(examples, 21, seed=1)


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """U+2028 and U+0085 are legal inside a JSON string (str.splitlines would split there); a CRLF
    line ending is still one line end."""
    texts = ["first\u2028second", "next\x85line", "carriage\rreturn"]
    lines = [json.dumps({"text": t, "label": "pos"}, ensure_ascii=False) for t in texts]
    path = write(tmp_path / "a.jsonl", "\r\n".join(lines) + "\r\n")
    examples = read_examples(path)
    assert [e.text for e in examples] == texts
    assert [e.source.rsplit(":", 1)[1] for e in examples] == ["1", "2", "3"]


def test_json_class_ids_stay_names_and_an_empty_label_to_predict_on_is_no_label(tmp_path):
    ids = write(tmp_path / "ids.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert [e.label for e in read_examples(ids)] == ["0", "1"]
    blank = write(tmp_path / "blank.csv", "text,label\nsome text,\n")
    assert read_examples(blank, require_label=False)[0].label is None
    with pytest.raises(UserError, match="blank.csv:2: label is empty"):
        read_examples(blank)


def test_task_json_labels_may_be_class_ids_and_extra_keys_are_the_data_s_own(tmp_path):
    folder = tmp_path / "task"
    folder.mkdir()
    write(folder / "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    write(folder / "task.json", json.dumps({"labels": [0, 1], "sizes": {"train": 2}, "source": [[{"x": 1}]]}))
    assert load_task(str(folder)).labels == ["0", "1"]
