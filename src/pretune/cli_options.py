"""The command line's conventions, the same for every subcommand (cli.py defines the options).

- A usage mistake is one line (what is wrong, where to look) and exit 2.
- The Hugging Face Trainer's option names are accepted beside pretune's own (`TRAINER_ALIASES`).
- `--config FILE` (YAML or JSON) gives option values; the command line overrides them.
- `--help` shows defaults, the choices of options with a fixed set of values, and plain metavars.

All of it works on the parser as built, so a subcommand's options slot in without knowing about it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

# pretune's option -> the transformers Trainer's name for it (TrainingArguments, or the example scripts
# such as run_glue.py), only where the meaning is the same; the README's table lists the rest and why.
# A row whose option a subcommand lacks is inert there. `--learning_rate` is not here: the Trainer's one
# rate for every parameter is its own option (cli.py), as pretune splits --lr (head, prompt) and --body-lr.
TRAINER_ALIASES = {
    "--out": "--output_dir",
    "--overwrite": "--overwrite_output_dir",
    "--model": "--model_name_or_path",
    "--max-length": "--max_seq_length",
    "--steps": "--max_steps",
    "--epochs": "--num_train_epochs",
    "--eval-every": "--eval_steps",
    "--checkpoint-every": "--save_steps",
    "--eval-batch-size": "--per_device_eval_batch_size",  # evaluation is not split across processes
    "--grad-accum": "--gradient_accumulation_steps",
    "--weight-decay": "--weight_decay",
    "--warmup-ratio": "--warmup_ratio",
    "--max-grad-norm": "--max_grad_norm",
    "--lr": "--learning_rate",  # only where --lr is the only rate (probe); train and eval define their own
    "--lr-scheduler": "--lr_scheduler_type",
    "--report-to": "--report_to",
}

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
NOT_FROM_A_CONFIG = {"help", "config", "version"}


class Parser(argparse.ArgumentParser):
    """argparse with pretune's conventions: one-line errors, `--config` files, help with defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest).lower()
            raise argparse.ArgumentError(None, f"unknown {name} '{value}' (choose one of {choices})")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        path = self._config_path(args) if "config" in {a.dest for a in self._actions} else None
        if path is not None:
            args = self._config_arguments(path, args) + args
        return super().parse_known_args(args, namespace)

    def _config_arguments(self, path: str, command_line: list[str]) -> list[str]:
        """The config file's values as arguments, put before the command line's (so it overrides them)."""
        values = read_config(path, self.error)
        options = {_key(s): a for a in self._actions for s in a.option_strings if s.startswith("--")}
        arguments = []
        for key, value in values.items():
            action = options.get(_key(str(key)))
            if action is None or action.dest in NOT_FROM_A_CONFIG:
                self.error(f"--config {path}: unknown option '{key}'")
            given = any(a == s or a.startswith(s + "=") for a in command_line for s in action.option_strings)
            if given and isinstance(action, argparse._AppendAction):
                continue  # a repeatable option on the command line: its list replaces the file's, not extends it
            arguments += _as_arguments(action, value, f"--config {path}: '{key}'", self.error)
        return arguments

    def _config_path(self, args: list[str]) -> str | None:
        """The file `--config` names (the last one given), as argparse will read it."""
        path = None
        for index, arg in enumerate(args):
            if arg == "--":
                break
            flag, equals, value = arg.partition("=")
            if self._means_config(flag):
                path = value if equals else (args[index + 1] if index + 1 < len(args) else None)
        return path

    def _means_config(self, flag: str) -> bool:
        """`--config`, or an abbreviation argparse would take for it (`--conf`)."""
        if flag == "--config":
            return True
        if not (flag.startswith("--") and len(flag) > 2 and self.allow_abbrev) or flag in self._option_string_actions:
            return False
        matches = {self._option_string_actions[s].dest for s in self._option_string_actions if s.startswith(flag)}
        return matches == {"config"}


def _key(option: str) -> str:
    """An option's name as a config key: no leading dashes, dashes and underscores alike."""
    return option.lstrip("-").replace("_", "-")


def read_config(path: str, error) -> dict:
    """A config file's mapping of option names to values (YAML or JSON); anything else is `error`."""
    file = Path(path)
    if file.suffix.lower() not in CONFIG_SUFFIXES:
        error(f"--config {path}: give a .yaml, .yml or .json file")
    if not file.is_file():
        error(f"--config {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
        values = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # YAML's messages span lines
        error(f"--config {path}: cannot read it: {reason}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        error(f"--config {path}: expected option: value pairs, found a {type(values).__name__}")
    return values


def _as_arguments(action: argparse.Action, value, where: str, error) -> list[str]:
    """One config value as the command-line arguments that would give it."""
    flag = action.option_strings[0]
    if value is None:
        return []
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            error(f"{where} is a switch: give true or false, not {value!r}")
        return [flag] if value else []
    if isinstance(value, dict):
        error(f"{where}: give a value or a list, not a mapping")
    if isinstance(action, argparse._AppendAction):  # a repeatable option: one occurrence per item
        items = value if isinstance(value, list) else [value]
        return [part for item in items for part in (flag, _checked(action, item, where, error))]
    if isinstance(value, list):  # the comma-separated lists (--seeds, --methods, --task of bench)
        return [flag, ",".join(_text(item) for item in value)]
    return [flag, _checked(action, value, where, error)]


def _checked(action: argparse.Action, value, where: str, error) -> str:
    """The value as text, refused here (naming the file) when the option would refuse it."""
    text = _text(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (TypeError, ValueError):
        error(f"{where}: invalid {getattr(action.type, '__name__', 'value')} value '{text}'")
    if action.choices is not None and converted not in action.choices:
        error(f"{where}: unknown value '{text}' (choose one of {', '.join(map(str, action.choices))})")
    return text


def _text(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- the parser as a whole


def apply_conventions(parser: argparse.ArgumentParser, version: str) -> None:
    """`--version` on the command, and on every subcommand with options: `--config` and the Trainer's aliases."""
    parser.add_argument("--version", action="version", version=f"pretune {version}")
    for command in subcommands(parser).values():
        if not any(action.option_strings and action.dest != "help" for action in command._actions):
            continue  # nothing to configure (pretune models)
        add_aliases(command)
        command.add_argument("--config", metavar="FILE",
                             help="take option values from this YAML or JSON file (keys: the long option names); "
                                  "options on the command line override it")


def add_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str] = TRAINER_ALIASES) -> None:
    """Give every option in `aliases` its second name, where the parser has the option and not the name."""
    for action in parser._actions:
        for option in list(action.option_strings):
            alias = aliases.get(option)
            if alias and alias not in parser._option_string_actions:
                action.option_strings.append(alias)
                parser._option_string_actions[alias] = action


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's destination -> the name it is known by (its first option string)."""
    return {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (where it has one and the text does not already say it), and plain
    metavars: N for a whole number, X for a number, else the option's own name (never an internal name)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and action.nargs != 0 and default not in (None, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text

    def _get_default_metavar_for_optional(self, action):
        if action.type is int:
            return "N"
        if action.type is float:
            return "X"
        long = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
        return long.lstrip("-").upper()
