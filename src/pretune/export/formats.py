"""A completed run, written for tools other than pretune:

    peft          a LoRA run (`--train lora`, a plain pattern): adapter_config.json and
                  adapter_model.safetensors with PEFT's key names; `PeftModel.from_pretrained(base, DIR)`
    transformers  a run whose body trained (`full`, `bitfit`, `last:N`; LoRA merged into the weights):
                  a `save_pretrained` model folder and its tokenizer; `AutoModelFor{MaskedLM,CausalLM}`
    prompt        P-tuning, prompt tuning, deep prompts (no PEFT form): soft_prompt.safetensors

Each also writes pretune_prompt.json (`prompt_file`): the pattern as token ids, the label words and
how their scores combine, so that label scores can be recomputed without pretune
(examples/load_prompt.py does it in plain torch and transformers).

What a format cannot hold is refused with one line before anything is written: a pattern ensemble,
a `head` run, a head readout or learned label tokens (pretune's own modules), a soft prompt in PEFT
or transformers form, a prompt export of a run whose body trained too. The output folder is written beside its target and
moved into place whole; an existing non-empty folder is refused, and with `force` only an earlier
export (one holding pretune_prompt.json) is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..api import load_run
from ..errors import UserError
from ..run_config import config_from_dict
from ..runs import open_completed
from .prompt_file import NAME as PROMPT_FILE
from .prompt_file import describe_prompt

FORMATS = ("peft", "transformers", "prompt")
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
PEFT_PREFIX = "base_model.model."  # where PEFT's model wrapper holds the base model


def export_run(run: str | os.PathLike, format: str, out: str | os.PathLike, force: bool = False) -> Path:
    """Export a completed run folder to `out` in `format` (peft | transformers | prompt); returns `out`."""
    if format not in FORMATS:
        raise UserError(f"unknown --format '{format}' (choose one of {', '.join(FORMATS)})")
    target = _checked_target(Path(out), force)
    with open_completed(run) as folder:
        saved = folder.read_config()
        config = config_from_dict(saved, folder.path)
    refuse_what_format_cannot_hold(config, format)
    predictor = load_run(run, device="cpu", dtype="float32")  # trained weights are float32: exported as they are
    method = predictor.method
    if not hasattr(method, "prompt"):  # a distilled or weighted ensemble
        raise UserError(f"run {run}: a pattern ensemble cannot be exported; export a run of one pattern")
    source = saved.get("model_source") or {"spec": config.model, "source": method.backbone.path or config.model}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {target}: cannot create folder {target.parent} ({error.strerror})") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        {"peft": _write_peft, "transformers": _write_transformers, "prompt": _write_prompt}[format](method, staging, source)
        prompt = describe_prompt(method, source)
        (staging / PROMPT_FILE).write_text(json.dumps(prompt, indent=2, ensure_ascii=False) + "\n")
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def refuse_what_format_cannot_hold(config, format: str) -> None:
    """One line for what `format` cannot express, from the run's configuration (no model loaded)."""
    options = config.method_options
    training = str(config.body_training())
    if config.method == "head":
        raise UserError("a --method head run holds pretune's own head on the body; export covers the cloze methods "
                        "(pet, ptuning, prompt-tuning, deep-prompt)")
    if len(options.get("patterns") or []) > 1:
        raise UserError(f"a pattern ensemble ({len(options['patterns'])} patterns) cannot be exported; "
                        "export a run of one pattern")
    if options.get("readout") == "head":
        raise UserError("--readout head is pretune's own head at the mask; export covers the verbalizer readout")
    if options.get("label_tokens") == "learned":
        raise UserError("--label-tokens learned scores the label words with pretune's own trained rows, which no "
                        "export format holds; export covers runs with --label-tokens fixed")
    soft = config.method in ("ptuning", "prompt-tuning", "deep-prompt")
    if format == "peft" and (training != "lora" or soft):
        what = f"--method {config.method}'s trained prompt" if soft else f"--train {training}"
        raise UserError(f"--format peft holds LoRA adapters only; this run has {what} "
                        f"(use --format {'prompt' if soft else 'transformers'})")
    if format == "transformers" and soft:
        raise UserError(f"--format transformers holds a model's weights; --method {config.method}'s trained prompt "
                        "is not among them (use --format prompt)")
    if format == "prompt" and (not soft or training != "frozen"):
        what = f"--method {config.method} trains no prompt" if not soft else f"its body trained too (--train {training})"
        raise UserError(f"--format prompt holds a trained prompt on a frozen body; {what}")


# ---------------------------------------------------------------- the formats


def _write_peft(method, folder: Path, source: dict) -> None:
    from safetensors.torch import save_file

    state = method.trainable_state_dict()
    # `model.` is where a method holds the body; PEFT's names have no adapter name (`.default`).
    tensors = {PEFT_PREFIX + name.removeprefix("model.").replace(".default.", "."): tensor.contiguous()
               for name, tensor in state.items()}
    config = method.model.peft_config["default"]
    config.base_model_name_or_path = source.get("source")
    config.inference_mode = True
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def _write_transformers(method, folder: Path, source: dict) -> None:
    model = method.model
    if hasattr(model, "peft_config"):
        model = _merged(model)
    model.save_pretrained(str(folder))
    method.backbone.tokenizer.save_pretrained(str(folder))


def _merged(model):
    """The body with its LoRA adapters folded into the weights they adapt (as PEFT's merge_and_unload)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, attribute = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attribute, module.get_base_layer())
    del model.peft_config
    return model


def _write_prompt(method, folder: Path, source: dict) -> None:
    from safetensors.torch import save_file

    prompt = method.input
    tensor = prompt.key_values if method.config.input == "prefix" else prompt.embeddings
    name = "prefix" if method.config.input == "prefix" else "soft_prompt"
    save_file({name: tensor.detach().float().contiguous()}, str(folder / SOFT_PROMPT_FILE), metadata={"format": "pt"})


# ---------------------------------------------------------------- the output folder


def _checked_target(target: Path, force: bool) -> Path:
    if target.is_symlink():
        raise UserError(f"--out {target}: is a symbolic link; give a folder")
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise UserError(f"--out {target}: exists and is not empty; choose another folder or pass --force")
        if not (target / PROMPT_FILE).is_file():
            raise UserError(f"--force {target}: not an earlier export (no {PROMPT_FILE}); pretune never deletes other files")
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    # The modes any folder and file the user creates get (the staging folder and some writers use 0o700/0o600).
    for file in staging.iterdir():
        os.chmod(file, 0o666 & ~_umask())
    os.chmod(staging, 0o777 & ~_umask())
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
