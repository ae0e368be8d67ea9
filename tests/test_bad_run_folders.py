"""The bad-input corpus, run folders: damaged, crafted or busy runs handed to predict, eval and
--resume, and --out / --overwrite pointed where they must not write. Each is one line naming what
is wrong, exit code 2, no traceback, nothing written that claims `complete`, and nothing of the
user's deleted.

A run is trained once per module (bert-tiny, 1 step) and copied for each case, so one model load
serves many cases; a crafted file comes with its checksum updated in run.json, as an attacker
would, so the check behind the checksum is exercised too.
"""

import hashlib
import io
import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import save

from pretune.locks import lock_for_writing
from pretune.training.checkpoint import Checkpointer
from refusals import assert_refused, claims_complete, run_main

TRAIN = ["train", "--model", "bert-tiny", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A complete run, a second one (another seed), and an interrupted one (stopped at step 2)."""
    from conftest import write_task_folder

    base = tmp_path_factory.mktemp("runs")
    task = write_task_folder(base / "task")
    assert run_main([*TRAIN, "--task", task, "--steps", "1", "--out", base / "complete"]) == 0
    assert run_main([*TRAIN, "--task", task, "--steps", "1", "--seed", "7", "--out", base / "other"]) == 0
    original = Checkpointer.save

    def save_then_stop(self, snapshot, config):
        original(self, snapshot, config)
        if snapshot.loop["step"] == 2:
            raise KeyboardInterrupt  # stands in for Ctrl-C: the run stays resumable

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Checkpointer, "save", save_then_stop)
        interrupted = [*TRAIN, "--task", task, "--steps", "4", "--checkpoint-every", "1", "--train", "bitfit"]
        assert run_main([*interrupted, "--out", base / "interrupted"]) == 130
    return {"base": base, "task": task}


# ---------------------------------------------------------------- ways to damage or craft a run


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded(run, name: str) -> None:
    """Record the file's new checksum in run.json: a crafted folder, not an accident."""
    status = json.loads((run / "run.json").read_text())
    status["sha256"][name] = sha256(run / name)
    (run / "run.json").write_text(json.dumps(status))


def craft_config(edit):
    def damage(run, runs):
        text = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(edit(text))
        recorded(run, "config.yaml")

    return damage


def craft_adapter(tensors):
    def damage(run, runs):
        state = {k: v for k, v in tensors(dict(torch_load(run / "adapter.safetensors"))).items()}
        (run / "adapter.safetensors").write_bytes(save(state))
        recorded(run, "adapter.safetensors")

    return damage


def torch_load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def truncate(name: str):
    def damage(run, runs):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])

    return damage


def garble(name: str):
    def damage(run, runs):
        data = bytearray((run / name).read_bytes())
        data[-5] ^= 0xFF
        (run / name).write_bytes(bytes(data))

    return damage


def remove(name: str):
    return lambda run, runs: (run / name).unlink()


def set_status(**fields):
    def damage(run, runs):
        status = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**status, **fields}))

    return damage


def swap_adapter(run, runs):
    shutil.copy(runs["base"] / "other" / "adapter.safetensors", run / "adapter.safetensors")


def payload_trainer(run, runs):
    """A pickle that would run a command when loaded without weights_only."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (run / "checkpoint" / "trainer.pt").write_bytes(pickle.dumps(Payload()))


def foreign_trainer(run, runs):
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    (run / "checkpoint" / "trainer.pt").write_bytes(buffer.getvalue())


def zero_checkpoint_weights(run, runs):
    path = run / "checkpoint" / "state.safetensors"
    state = {k: torch.zeros_like(v) for k, v in torch_load(path).items()}
    path.write_bytes(save(state))


def foreign_checkpoint_weights(run, runs):
    """Weights of another method, with trainer.pt's checksum made to match."""
    folder = run / "checkpoint"
    (folder / "state.safetensors").write_bytes(save({"current.prompt.embedding": torch.zeros(4, 8)}))
    saved = torch.load(folder / "trainer.pt", weights_only=True)
    saved["sha256"]["state.safetensors"] = sha256(folder / "state.safetensors")
    torch.save(saved, folder / "trainer.pt")


def garbage_adapter(run, runs):
    (run / "adapter.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{not json")
    recorded(run, "adapter.safetensors")


def unknown_key(state):
    return {**state, "head.9.weight": torch.zeros(2, 2)}


def wrong_shape(state):
    name = sorted(state)[0]
    return {**state, name: torch.zeros(3, 3, 3)}


PREDICT = ["predict", "--run", "{run}", "--input", "{task}/test.jsonl", "--output", "{tmp}/predictions.jsonl"]
EVAL = ["eval", "--run", "{run}", "--input", "{task}/dev.jsonl", "--quiet"]
RESUME = ["train", "--resume", "{run}", "--quiet"]

PET = "method_options: {patterns: ['{text} It was {mask}.'], verbalizer: 'positive=great negative=bad'}"
# id: (which run, damage, command, the line)
CASES = {
    "truncated adapter": ("complete", truncate("adapter.safetensors"), PREDICT, "adapter.safetensors: damaged or replaced"),
    "garbled adapter": ("complete", garble("adapter.safetensors"), PREDICT, "adapter.safetensors: damaged or replaced"),
    "deleted adapter": ("complete", remove("adapter.safetensors"), PREDICT, "adapter.safetensors: cannot be read (No such"),
    "another run's adapter": ("complete", swap_adapter, PREDICT, "adapter.safetensors: damaged or replaced"),
    "another run's adapter, eval": ("complete", swap_adapter, EVAL, "adapter.safetensors: damaged or replaced"),
    "crafted empty adapter": ("complete", craft_adapter(lambda s: {}), PREDICT, "no weights for"),
    "crafted adapter with an unknown key": (
        "complete", craft_adapter(unknown_key), PREDICT, "weights for parameters this method does not have: head.9.weight",
    ),
    "crafted adapter with a wrong shape": ("complete", craft_adapter(wrong_shape), PREDICT, "have shape [3, 3, 3]"),
    "crafted adapter that is not safetensors": ("complete", garbage_adapter, PREDICT, "unreadable weights file"),
    "deleted config.yaml": ("complete", remove("config.yaml"), PREDICT, "config.yaml: cannot be read"),
    "edited config.yaml": ("complete", garble("config.yaml"), PREDICT, "config.yaml: damaged or replaced"),
    "crafted config.yaml, invalid YAML": (
        "complete", craft_config(lambda t: t + "\n  : : [\n"), PREDICT, "config.yaml: not a valid run configuration",
    ),
    "crafted config.yaml with a Python object": (
        "complete", craft_config(lambda t: "!!python/object/apply:os.system ['touch pwned']\n"), PREDICT,
        "not a valid run configuration (ConstructorError",
    ),
    "crafted config.yaml, a list": ("complete", craft_config(lambda t: "- head\n- pet\n"), PREDICT, "expected a mapping"),
    "crafted config.yaml, unknown key": (
        "complete", craft_config(lambda t: t + "colour: blue\n"), PREDICT, "config.yaml: unknown option colour",
    ),
    "crafted config.yaml, wrong type": (
        "complete", craft_config(lambda t: t.replace("lora_r: 8", "lora_r: eight")), PREDICT, "lora_r must be int, got str",
    ),
    "crafted config.yaml, training seed a name": (
        "complete", craft_config(lambda t: t.replace("seed: 42", "seed: forty-two")), PREDICT, "(training): seed must be int",
    ),
    "crafted config.yaml, training seed 2**70": (
        "complete", craft_config(lambda t: t.replace("seed: 42", f"seed: {2**70}")), PREDICT, "--seed must be a whole number",
    ),
    "crafted config.yaml, unknown training option": (
        "complete", craft_config(lambda t: t.replace("seed: 42", "seed: 42\n  speed: 9")), PREDICT, "unknown option speed",
    ),
    "crafted config.yaml, unknown method option": (
        "complete", craft_config(lambda t: t.replace("method_options: {}", "method_options: {colour: 1}")), PREDICT,
        "method 'head' has no option colour",
    ),
    "crafted config.yaml, method option of a wrong type": (
        "complete", craft_config(lambda t: t.replace("method_options: {}", "method_options: {dropout: high}")), PREDICT,
        "method 'head': dropout must be float",
    ),
    "crafted config.yaml, another method": (
        "complete", craft_config(lambda t: t.replace("method: head", "method: pet").replace("method_options: {}", PET)),
        PREDICT, "does not have",
    ),
    "crafted config.yaml, duplicate labels": (
        "complete", craft_config(lambda t: t.replace("- positive", "- negative")), PREDICT, "task_info labels must be",
    ),
    "crafted config.yaml without task_info": (
        "complete", craft_config(lambda t: t.split("task_info:")[0]), PREDICT, "task_info must hold",
    ),
    "run still running": ("complete", set_status(status="running"), PREDICT, "is not complete (status: running)"),
    "run.json not JSON": (
        "complete", lambda run, runs: (run / "run.json").write_text("{{"), PREDICT, "is not complete (status: None)",
    ),
    "run.json with damaged checksums": ("complete", set_status(sha256=[1, 2]), PREDICT, "'sha256' is damaged"),
    "predictions into a missing folder": (
        "complete", None, [*PREDICT[:-1], "{tmp}/no/such/folder/p.jsonl"], "/no/such/folder does not exist",
    ),
    "predictions over an existing file": ("complete", None, [*PREDICT[:-1], "{task}/test.jsonl"], "already exists"),
    "predict input that is a FIFO": (
        "complete", lambda run, runs: os.mkfifo(run.parent / "fifo.jsonl"),
        ["predict", "--run", "{run}", "--input", "{tmp}/fifo.jsonl"], "fifo.jsonl: not a regular file",
    ),
    "predict input missing": (
        "complete", None, ["predict", "--run", "{run}", "--input", "{tmp}/none.jsonl"], "data file not found",
    ),
    "eval metrics into a missing folder": ("complete", None, [*EVAL, "--json", "{tmp}/no/m.json"], "/no does not exist"),
    "predict with a folder that is no run": (
        "complete", None, ["predict", "--run", "{task}", "--input", "{task}/test.jsonl"], "not a pretune run folder",
    ),
    "resume with a pickle payload in trainer.pt": (
        "interrupted", payload_trainer, RESUME, "trainer.pt: unreadable or unsafe checkpoint (UnpicklingError",
    ),
    "resume with a truncated trainer.pt": ("interrupted", truncate("checkpoint/trainer.pt"), RESUME, "unreadable or unsafe"),
    "resume with another program's trainer.pt": ("interrupted", foreign_trainer, RESUME, "not a pretune checkpoint"),
    "resume with zeroed checkpoint weights": (
        "interrupted", zero_checkpoint_weights, RESUME, "state.safetensors: damaged or replaced",
    ),
    "resume with deleted checkpoint weights": (
        "interrupted", remove("checkpoint/state.safetensors"), RESUME, "state.safetensors: cannot be read",
    ),
    "resume with another method's checkpoint": (
        "interrupted", foreign_checkpoint_weights, RESUME, "weights for parameters this method does not have",
    ),
    "resume with invalid YAML": (
        "interrupted", lambda run, runs: (run / "config.yaml").write_text("a: [\n"), RESUME, "not a valid run configuration",
    ),
    "resume with an unknown key in config.yaml": (
        "interrupted", lambda run, runs: (run / "config.yaml").write_text("task: x\nshape: round\n"), RESUME,
        "unknown option shape",
    ),
}


def fill(argv, run, runs, tmp_path) -> list[str]:
    values = {"{run}": str(run), "{task}": str(runs["task"]), "{tmp}": str(tmp_path)}
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_or_crafted_run_is_one_line_and_exit_2(case, runs, tmp_path, capsys):
    source, damage, command, expected = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(runs["base"] / source, run, symlinks=True)
    if damage is not None:
        damage(run, runs)
    was_complete = claims_complete(run)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = run_main(fill(command, run, runs, tmp_path))
    assert_refused(code, capsys.readouterr().err, expected)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no predictions, nothing else written
    assert claims_complete(run) == was_complete  # a refusal never turns a run complete


# ---------------------------------------------------------------- where --out and --overwrite may not write


def test_overwrite_refuses_a_folder_that_is_no_run_and_keeps_its_files(runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code = run_main([*TRAIN, "--task", runs["task"], "--steps", "1", "--out", mine, "--overwrite"])
    assert_refused(code, capsys.readouterr().err, "not a pretune run folder (no run.json)")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"


def test_a_bad_input_after_the_folder_was_made_keeps_the_user_s_empty_folder(runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    code = run_main([*TRAIN, "--task", runs["task"], "--steps", "1", "--model", "no-such-model", "--out", mine])
    assert_refused(code, capsys.readouterr().err, "'no-such-model'")
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_overwrite_never_follows_a_symbolic_link(runs, tmp_path, capsys):
    target = tmp_path / "target"
    shutil.copytree(runs["base"] / "complete", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    (tmp_path / "link").symlink_to(target)
    code = run_main([*TRAIN, "--task", runs["task"], "--steps", "1", "--out", tmp_path / "link", "--overwrite"])
    assert_refused(code, capsys.readouterr().err, "is a symbolic link")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


@pytest.mark.parametrize("command", ["overwrite", "resume", "predict"])
def test_a_busy_run_folder_is_refused(command, runs, tmp_path, capsys):
    """Another process writes the folder (its lock is held here): a second writer, or a reader, is refused."""
    source = "interrupted" if command == "resume" else "complete"
    run = tmp_path / "run"
    shutil.copytree(runs["base"] / source, run)
    argv = {
        "overwrite": [*TRAIN, "--task", runs["task"], "--steps", "1", "--out", run, "--overwrite"],
        "resume": ["train", "--resume", run, "--quiet"],
        "predict": fill(PREDICT, run, runs, tmp_path),
    }[command]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    lock = lock_for_writing(run)
    try:
        code = run_main(argv)
    finally:
        lock.release()
    expected = "is being written by another pretune process" if command == "predict" else "is in use by another pretune process"
    assert_refused(code, capsys.readouterr().err, f"{expected} (pid {os.getpid()})")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


OUT_CASES = {
    "--out under a file": (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "run", "cannot create the run folder"),
    "--out that is a file": (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "exists and is not a folder"),
    "--out with a name too long": (lambda tmp: tmp / ("r" * 300), "File name too long"),
    "--out under a read-only folder": (lambda tmp: (tmp / "ro").mkdir(mode=0o500) or tmp / "ro" / "run", "Permission denied"),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_out_where_no_folder_can_be_made_is_one_line(case, runs, tmp_path, capsys):
    if "read-only" in case and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    make, expected = OUT_CASES[case]
    out = make(tmp_path)
    code = run_main([*TRAIN, "--task", runs["task"], "--steps", "1", "--out", out])
    assert_refused(code, capsys.readouterr().err, expected)


def test_overwrite_says_what_it_replaces(runs, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(runs["base"] / "complete", run)
    code = run_main([*TRAIN, "--task", runs["task"], "--steps", "2", "--out", run, "--overwrite"])
    assert code == 0 and f"--overwrite: replacing the run in {run} (status complete" in caplog.text
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 2 and claims_complete(run)


# ---------------------------------------------------------------- valid inputs that must not be refused


def test_predict_output_with_line_separators_reads_back_in_eval(runs, tmp_path, capsys):
    data = tmp_path / "odd.jsonl"
    rows = [{"text": "a warm\u2028and funny film", "label": "positive"}, {"text": "a dull\x85film", "label": "negative"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    output = tmp_path / "predictions.jsonl"
    assert run_main(["predict", "--run", runs["base"] / "complete", "--input", data, "--output", output]) == 0
    assert "\u2028" in output.read_text(encoding="utf-8")  # written raw (ensure_ascii=False)
    assert run_main(["eval", "--run", runs["base"] / "complete", "--input", output, "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 2


def test_a_run_records_its_task_as_an_absolute_path(runs):
    config = (runs["base"] / "complete" / "config.yaml").read_text()
    assert f"task: {runs['task']}" in config and runs["task"].is_absolute()


def test_an_old_run_with_a_relative_task_resumes_from_another_directory(runs, tmp_path, monkeypatch):
    """Older versions saved --task as given; it is then looked up from the run folder upwards."""
    shutil.copytree(runs["task"], tmp_path / "data" / "task")
    run = tmp_path / "runs" / "old"
    shutil.copytree(runs["base"] / "interrupted", run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace(f"task: {runs['task']}", "task: data/task"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_main(["train", "--resume", run, "--quiet"]) == 0
    assert claims_complete(run)


def test_a_run_of_an_older_version_without_checksums_or_lock_still_predicts(runs, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(runs["base"] / "complete", run)
    status = json.loads((run / "run.json").read_text())
    del status["sha256"]
    (run / "run.json").write_text(json.dumps(status))
    (run / ".lock").unlink()
    assert run_main(fill(PREDICT, run, runs, tmp_path)) == 0
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 8


def test_a_run_trained_on_a_gpu_predicts_where_there_is_none(runs, tmp_path):
    """The training device is the run's history, not a requirement of predict."""
    run = tmp_path / "gpu"
    shutil.copytree(runs["base"] / "complete", run)
    craft_config(lambda t: t.replace("device: auto", "device: cuda:0"))(run, runs)
    assert "device: cuda:0" in (run / "config.yaml").read_text()
    assert run_main(fill(PREDICT, run, runs, tmp_path)) == 0
