"""`pretune probe`: a frozen model asked every relation of a LAMA folder, precision@1 per relation.

For each relation: read its facts, keep those whose object is one token (LAMA's convention; or
refuse the first that is not, with `multi_token="error"`), pose it with the method's prompt, train
the prompt on train (ptuning, deep-prompt) keeping the state best on dev, and measure P@1 on test.
Each finished relation is one JSON file under `OUT/relations/`, written whole: a rerun of the same
command skips those (resume) and the report is rebuilt from all of them.

P-tuning's template is `[P*3] {text} [P*3] {mask}` with random soft tokens (`init="random"`, the
paper's shape), or the manual prompt with each word a soft token starting as that word
(`init="manual"`: training starts from the manual prompt's answers, and the best dev state is
never worse on dev). With `variants=True` each relation that has several manual wordings
(`relations.VARIANTS`) is run once per wording (P-tuning: started from that wording), for the
spread across prompts.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..errors import UserError
from ..runs import atomic_write_text, save_weights
from . import report
from .facts import SPLITS, read_relation, relation_folders, require_single_token, single_token_facts
from .prober import Prober, ProbeSetup
from .relations import VARIANTS, anchored_from, manual_prompt, soft_template, variant_prompts
from .training import TrainSettings, precision_at_1, train_prompt

log = logging.getLogger(__name__)

METHODS = {"pet": "pattern", "ptuning": "soft", "deep-prompt": "prefix"}  # method -> prompt input
MULTI_TOKEN = ("drop", "error")
INITS = ("random", "manual")  # where P-tuning's soft tokens start


@dataclass
class ProbeConfig:
    data: str
    model: str
    method: str = "pet"
    out: str = "probe"
    encoder: str = "lstm"
    relations: list[str] | None = None
    soft_tokens: int = 3  # per group in P-tuning's template
    init: str = "random"  # ptuning: `[P*3] {text} [P*3] {mask}` at random, or soft tokens from the manual prompt's words
    prefix_length: int = 16
    variants: bool = False
    multi_token: str = "drop"
    max_eval: int | None = None  # at most this many dev and test facts per relation (a seeded sample)
    settings: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown --method '{self.method}' for probe (choose one of {', '.join(METHODS)})")
        if self.init not in INITS:
            raise UserError(f"unknown --init '{self.init}' (choose random or manual)")
        if self.multi_token not in MULTI_TOKEN:
            raise UserError(f"unknown --multi-token '{self.multi_token}' (choose drop or error)")
        if self.max_eval is not None and self.max_eval < 1:
            raise UserError(f"--max-eval must be at least 1, got {self.max_eval}")
        if self.soft_tokens < 1 or self.prefix_length < 1:
            raise UserError("--soft-tokens and --prompt-length must be at least 1")
        s = self.settings
        if s.epochs < 0 or s.batch_size < 1 or s.eval_batch_size < 1 or s.patience < 1:
            raise UserError("--epochs must be >= 0, --batch-size, --eval-batch-size and --patience >= 1")

    def identity(self) -> dict:
        """What a folder's results depend on: a resumed run must ask the same."""
        options = asdict(self)
        for key in ("out", "relations", "data"):
            options.pop(key)
        return options


def run_probe(config: ProbeConfig, progress: bool = True, backbone=None) -> dict:
    """Run (or resume) a probe; returns the summary also written to OUT/results.json."""
    config.validate()
    folders = relation_folders(config.data, config.relations)
    if config.variants:
        folders = {r: p for r, p in folders.items() if r in VARIANTS}
        if not folders:
            raise UserError(f"--variants: none of the relations has prompt variants (those that do: {', '.join(VARIANTS)})")
    out = Path(config.out)
    _check_folder(out, config)
    todo = [r for r in folders if not (out / "relations" / f"{r}.json").is_file()]
    if todo:
        backbone = backbone or load_backbone(config.model)  # a model that fails to load leaves no folder behind
    _prepare_folder(out, config)
    if todo:
        bar = tqdm(todo, desc=f"probe {config.model} {config.method}", disable=not progress)
        for relation in bar:
            bar.set_postfix(relation=relation)
            record = probe_relation(backbone, relation, folders[relation], config, out, progress)
            atomic_write_text(out / "relations" / f"{relation}.json", json.dumps(record, indent=1) + "\n")
            report.plot_relation(record, out / "plots" / f"{relation}.png")
    return report.write_summary(out, config)


def _check_folder(out: Path, config: ProbeConfig) -> None:
    """Refuse an --out that holds anything but a probe with the same options (resume)."""
    marker = out / "probe.json"
    identity = config.identity()
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != identity:
            changed = sorted(k for k in identity if previous.get(k) != identity[k])
            raise UserError(f"--out {out} holds a probe with other options ({', '.join(changed)}); choose another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not a probe folder; choose another --out")


def _prepare_folder(out: Path, config: ProbeConfig) -> None:
    for sub in ("relations", "plots", "adapters"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "probe.json", json.dumps(config.identity(), indent=1) + "\n")


def prompts_for(relation: str, config: ProbeConfig, kind: str) -> list[str]:
    """The patterns a relation is asked with: one, or one per wording with `variants`."""
    manual = variant_prompts(relation, kind) if config.variants else [manual_prompt(relation, kind)]
    if config.method != "ptuning":
        return manual
    if config.variants or config.init == "manual":
        return [anchored_from(p) for p in manual]
    return [soft_template(kind, config.soft_tokens)]


def probe_relation(backbone, relation: str, folder: Path, config: ProbeConfig, out: Path, progress: bool) -> dict:
    facts = read_relation(folder)
    runs = []
    for index, pattern in enumerate(prompts_for(relation, config, backbone.kind)):
        setup = ProbeSetup(pattern, METHODS[config.method], config.encoder, config.prefix_length)
        torch.manual_seed(config.settings.seed)  # random soft tokens depend on the seed alone, not on what ran before
        prober = Prober(backbone, setup)
        items, counts = _items(prober, facts, config)
        outcome = train_prompt(prober, items["train"], items["dev"], config.settings, progress)
        batch = config.settings.eval_batch_size
        run = {
            "pattern": pattern,
            "test_p_at_1": precision_at_1(prober, items["test"], batch),
            # An untrained prompt chooses nothing on dev: its dev P@1 would only cost time.
            "dev_p_at_1": precision_at_1(prober, items["dev"], batch) if outcome.curve else None,
            "train_seconds": round(outcome.seconds, 2),
            "steps": outcome.steps,
            "best_step": outcome.best_step,
            "curve": outcome.curve,
            "trained_parameters": sum(p.numel() for p in prober.trainable_parameters()),
        }
        state = prober.adapter_state()
        run["adapter_bytes"] = save_weights(out / "adapters" / f"{relation}-{index}.safetensors", state) if state else 0
        runs.append(run)
    return {"relation": relation, "counts": counts, "runs": runs}


def _items(prober: Prober, facts: dict, config: ProbeConfig) -> tuple[dict, dict]:
    """Each split's facts as items; per split how many facts were single-token of how many, and
    how many of those were used (`max_eval` samples dev and test, `max_train` cuts train)."""
    encode, lead, unk = prober.encode, prober.answer_lead, prober.backbone.tokenizer.unk_token_id
    items, counts = {}, {}
    for split in SPLITS:
        if config.multi_token == "error":
            kept = [(fact, require_single_token(fact, encode, lead, unk)) for fact in facts[split]]
        else:
            kept, _ = single_token_facts(facts[split], encode, lead, unk)
        used = _sample(kept, config.max_eval, config.settings.seed) if split != "train" else kept
        used = used[: config.settings.max_train] if split == "train" and config.settings.max_train else used
        items[split] = [prober.item(fact, token) for fact, token in used]
        counts[split] = {"kept": len(kept), "total": len(facts[split]), "used": len(used)}
    return items, counts


def _sample(facts: list, limit: int | None, seed: int) -> list:
    """At most `limit` of the facts, drawn with a fixed seed, in their file order."""
    if limit is None or len(facts) <= limit:
        return facts
    chosen = sorted(random.Random(seed).sample(range(len(facts)), limit))
    return [facts[i] for i in chosen]
