"""Same seed and configuration, same run: identical metrics, predictions and weights on CPU."""

import pytest

from pretune.cli import main
from run_folders import assert_same_run

METHODS = {
    "head": ["--method", "head", "--train", "last:1", "--steps", "6"],  # body dropout on: the RNG matters
    "pet": ["--method", "pet", "--train", "bitfit", "--steps", "4"],
    # random soft tokens and the LSTM's initial weights come from the seed too
    "ptuning": ["--method", "ptuning", "--pattern", "[P*2]{text} It [P] {mask}.", "--steps", "4"],
    "deep-prompt": ["--method", "deep-prompt", "--reparam", "--prompt-length", "3", "--steps", "4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_seed_and_config_give_the_same_run_twice(tmp_path, task_folder, capsys, method):
    options = [
        "train", "--task", str(task_folder), "--model", "bert-tiny", *METHODS[method], "--batch-size", "4",
        "--eval-every", "2", "--seed", "7", "--device", "cpu", "--quiet",
    ]
    for name in ("first", "second"):
        assert main([*options, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
    assert_same_run(tmp_path / "second", tmp_path / "first")
