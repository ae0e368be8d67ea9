"""Issue 16, step 6: which single change helps the cloze methods on smollm2-135m most, on small samples.

One (task, seed, arm) per call, its test probabilities kept in benchmarks/results/levers.json (so a
call that was killed costs only its own arm, and ensembles are computed from stored probabilities):

    python benchmarks/levers.py run --task sst-2 --seed 42 --arm zero-shot
    python benchmarks/levers.py report          # levers.md from levers.json, ensembles included

Arms (smollm2-135m unless named; 200-example fixed test sample, the LM-BFF split 16-<seed>):
- zero-shot: the task's built-in causal pattern, nothing trained;
- zero-shot-demos: the same with one demonstration per label in the context (LM-BFF's demonstrations,
  simplified: one fixed training example per label, drawn with the seed, the same for every input);
- prompt-tuning: 4 soft tokens before the pattern, body frozen, 100 steps (the bench arm);
- pet: the pattern, whole body, 40 steps, the untrained state evaluated at step 0 and kept if best;
- pet-demos: pet with the demonstrations of zero-shot-demos;
- zero-shot-channel, pet-channel: noisy-channel scoring (`--scoring channel`, Min et al. 2022): the built-in
  pattern turned around, label word first ("Sentiment: {mask}\nReview: {text}", the same words), each label
  scored by the log-probability of the text after its word;
- zero-shot-reversed, pet-reversed: that turned-around pattern scored directly (the word's probability
  too): what the order alone does, so that channel's difference is the scoring's;
- pet-learned-labels, prompt-tuning-learned-labels: the arm with learned label tokens (`--label-tokens
  learned`, DART, Zhang et al. 2022): the label words' output rows train as copies at the method's own rate;
- any arm + `-cal`: with contextual calibration (`--calibrate`: label probabilities divided by those of
  a content-free input), against the label bias a context of demonstrations can bring;
- ipet: iPET (`--generations 2`, `--generation-growth 5`, Schick & Schütze 2021) on the first two
  built-in causal patterns (each with its own words), whole body, 40 steps per model like pet: generation
  2 trains each pattern on the 32 labelled sentences plus 128 (64 a label) the other pattern's model
  labelled most confidently, then the ensemble is distilled (40 steps) into one model. The unlabelled
  pool is small: a fixed sample (seed 0) of 200 texts of the task's full training set
  (../shared/data/full/<task>/train.jsonl), the split's own train and dev texts left out; never the
  test set. About 5 times pet's training (4 models + distillation);
- setfit-mpnet: the SetFit anchor (setfit 1.2.0 defaults on all-mpnet-base-v2);
- ensembles (report only): the mean of two arms' test probabilities, e.g. setfit-mpnet + pet.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "levers.json"
TEST_SAMPLE = 200
POOL_SAMPLE = 200  # unlabelled texts of the ipet arm
MODEL = "smollm2-135m"
# The built-in causal prompt with the label word before the text, for the channel arms (no built-in one exists).
CHANNEL_PROMPTS = {
    "sst-2": ("Sentiment: {mask}\nReview: {text}", "positive=positive negative=negative"),
    "mr": ("Sentiment: {mask}\nReview: {text}", "positive=positive negative=negative"),
}
ENSEMBLES = [("setfit-mpnet", "pet"), ("setfit-mpnet", "zero-shot"), ("setfit-mpnet", "prompt-tuning"),
             ("setfit-mpnet", "zero-shot-demos-cal")]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return name + "".join(f", {f}" for f in ("amx_bf16", "avx512_bf16") if f in flags)


def demonstrations(task_name: str, seed: int) -> tuple[str, str]:
    """(pattern with one demonstration per label in front, verbalizer) from the built-in causal prompt."""
    from pretune.cloze.prompt import built_in_prompts
    from pretune.run_config import RunConfig, prepare_task

    task = prepare_task(RunConfig(task=task_name, split_seed=seed))
    prompt = built_in_prompts(task.name, "causal")[0]
    source = prompt.pattern.source
    rng = random.Random(seed)
    blocks = []
    for label in task.labels:
        example = rng.choice([e for e in task.train if e.label == label])
        word = prompt.verbalizer.words[label][0]
        filled = source.replace("{text}", _literal(example.text)).replace("{text_pair}", _literal(example.text_pair or ""))
        blocks.append(filled.replace("{mask}", word))
    rng.shuffle(blocks)
    verbalizer = "; ".join(f"{label}={','.join(words)}" for label, words in prompt.verbalizer.words.items())
    return "\n\n".join(blocks) + "\n\n" + source, verbalizer


def _literal(text: str) -> str:
    return text.replace("{", "(").replace("}", ")").replace("[", "(").replace("]", ")")  # no field or soft-token syntax


def run_config(task: str, seed: int, arm: str):
    from pretune.run_config import RunConfig
    from pretune.training.trainer import TrainConfig

    options, steps, method = {}, 100, "pet"
    calibrate = arm.endswith("-cal")
    arm = arm.removesuffix("-cal")
    learned_labels = arm.endswith("-learned-labels")
    arm = arm.removesuffix("-learned-labels")
    if arm.endswith("demos"):
        pattern, verbalizer = demonstrations(task, seed)
        options = {"patterns": [pattern], "verbalizer": verbalizer}
    if arm.endswith(("-channel", "-reversed")):
        if task not in CHANNEL_PROMPTS:
            raise SystemExit(f"levers.py: no channel pattern for task '{task}' (add one to CHANNEL_PROMPTS)")
        pattern, verbalizer = CHANNEL_PROMPTS[task]
        scoring = "channel" if arm.endswith("-channel") else "direct"
        options = {"patterns": [pattern], "verbalizer": verbalizer, "scoring": scoring}
    if arm == "prompt-tuning":
        method, options = "ptuning", {"encoder": "none", "prompt_length": 4}
    if arm.startswith("pet"):
        steps = 40
    if arm == "ipet":
        steps, options = 40, ipet_options(task, seed)
    if calibrate:
        options["calibrate"] = True
    if learned_labels:
        options["label_tokens"] = "learned"
    training = TrainConfig(steps=steps, batch_size=8, seed=seed, checkpoint_every=0)
    return RunConfig(task=task, model=MODEL, method=method, method_options=options, split_seed=seed,
                     test_sample=TEST_SAMPLE, dtype="bfloat16", training=training)


def ipet_options(task_name: str, seed: int) -> dict:
    """The ipet arm's method options: two built-in patterns, two generations, distillation, the pool file."""
    from pretune.cloze.prompt import built_in_prompts

    patterns = [prompt.pattern.source for prompt in built_in_prompts(task_name, "causal")[:2]]
    return {"patterns": patterns, "generations": 2, "generation_growth": 5, "distil": True,
            "unlabelled": str(unlabelled_pool(task_name, seed))}


def unlabelled_pool(task_name: str, seed: int) -> Path:
    """A file of POOL_SAMPLE texts drawn (seed 0) from the task's full training set, without the texts of
    split 16-<seed>: the same pool for every call of a task and seed."""
    from pretune.data import data_root, read_examples
    from pretune.run_config import RunConfig, prepare_task

    full = (data_root() or Path("../shared/data")) / "full" / task_name / "train.jsonl"
    if not full.is_file():
        raise SystemExit(f"levers.py: no unlabelled texts for task '{task_name}' ({full} not found)")
    split = prepare_task(RunConfig(task=task_name, split_seed=seed))
    labelled = {e.text for e in split.train + split.dev}
    texts = sorted({e.text for e in read_examples(full, require_label=False)} - labelled)
    pool = random.Random(0).sample(texts, POOL_SAMPLE)
    path = Path(tempfile.gettempdir()) / "pretune-levers" / f"{task_name}-{seed}-pool.jsonl"
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text("".join(json.dumps({"text": text}) + "\n" for text in pool))
    os.replace(partial, path)  # two calls may write it at once: each write is whole
    return path


def run_arm(task: str, seed: int, arm: str) -> dict:
    import torch

    torch.set_num_threads(1)
    load_before, start = os.getloadavg(), time.perf_counter()
    if arm == "setfit-mpnet":
        measured = _setfit(task, seed)
    elif arm.startswith("zero-shot"):
        measured = _untrained(run_config(task, seed, arm))
    else:
        measured = _trained(run_config(task, seed, arm))
    return {**measured, "wall_seconds": time.perf_counter() - start, "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()), "cpu": cpu_name(), "torch_threads": 1,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _untrained(config) -> dict:
    import torch

    from pretune.run_config import build_method, prepare_task
    from pretune.training.evaluation import evaluate

    task = prepare_task(config)
    method = build_method(config, task)
    method.finalize()
    out = {}
    for split in ("dev", "test"):
        examples = getattr(task, split)
        metrics, scores = evaluate(method, examples, task.targets(examples), 32)
        out[split] = metrics
        out[f"{split}_probabilities"] = torch.softmax(scores.float(), dim=-1).tolist()
    out["targets"] = task.targets(task.test)
    return out


def _trained(config) -> dict:
    from pretune.api import train_run

    with tempfile.TemporaryDirectory(prefix="levers-") as scratch:
        result = train_run(config, out=Path(scratch) / "run", progress=False)
        rows = [json.loads(line) for line in (Path(scratch) / "run" / "predictions.jsonl").read_text().splitlines()]
    labels = result.method.task.labels
    train = result.metrics["train"]
    return {"dev": result.metrics.get("dev"), "test": {k: v for k, v in result.metrics["test"].items() if "examples" not in k},
            "test_probabilities": [[row["probabilities"][label] for label in labels] for row in rows],
            "targets": [labels.index(row["label"]) for row in rows], "best_step": train["best_step"],
            "history": train["history"], "train_seconds": train["seconds"]}


def _setfit(task_name: str, seed: int) -> dict:
    from pretune.bench import setfit_arm
    from pretune.bench.arms import ARMS, RunSpec

    spec = ARMS["setfit-mpnet"].spec_for(RunSpec(task=task_name, model=MODEL, seed=seed, test_sample=TEST_SAMPLE))
    task = spec.load_task()
    from pretune.backbones import resolve

    model = setfit_arm._model(resolve(spec.model))
    texts = setfit_arm._texts_of(model, task)
    start = time.perf_counter()
    setfit_arm._train(model, texts(task.train), task.targets(task.train), seed)
    seconds = time.perf_counter() - start
    out = {"train_seconds": seconds, "targets": task.targets(task.test)}
    for split in ("dev", "test"):
        examples = getattr(task, split)
        probabilities = np.asarray(model.predict_proba(texts(examples), as_numpy=True), dtype=float)
        out[f"{split}_probabilities"] = probabilities.tolist()
        out[split] = {"accuracy": float(np.mean(probabilities.argmax(-1) == np.asarray(task.targets(examples))))}
    return out


# ---------------------------------------------------------------- store and report


def load() -> dict:
    return json.loads(STORE.read_text()) if STORE.is_file() else {}


def save(store: dict) -> None:
    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(store.items())) + "\n}\n"
    partial = STORE.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, STORE)


def accuracy(probabilities, targets) -> float:
    return float(np.mean(np.asarray(probabilities).argmax(-1) == np.asarray(targets)))


def report(store: dict) -> str:
    cells: dict[tuple[str, int], dict[str, dict]] = {}
    for key, record in store.items():
        task, seed, arm = key.split("/")
        cells.setdefault((task, int(seed)), {})[arm] = record
    arms = ["zero-shot", "zero-shot-cal", "zero-shot-demos", "zero-shot-demos-cal", "zero-shot-reversed",
            "zero-shot-channel", "prompt-tuning", "prompt-tuning-learned-labels", "pet", "pet-demos", "pet-reversed",
            "pet-channel", "pet-learned-labels", "ipet", "setfit-mpnet"]
    lines = ["# Levers on small samples (issue 16, step 6)", "",
             f"smollm2-135m unless named; LM-BFF split 16-<seed>; test: a fixed random sample of {TEST_SAMPLE} "
             "examples (seed 0) of the task's test set, the same for every arm; accuracy ×100. Made by "
             "`benchmarks/levers.py` from `levers.json` (per-example test probabilities of every arm). "
             "An ensemble is the mean of two arms' probabilities.", ""]
    header = "| task | seed | " + " | ".join(arms) + " | " + " | ".join(" + ".join(pair) for pair in ENSEMBLES) + " |"
    lines += [header, "|---|---|" + "---|" * (len(arms) + len(ENSEMBLES))]
    for (task, seed), by_arm in sorted(cells.items()):
        row = [f"{100 * by_arm[a]['test']['accuracy']:.1f}" if a in by_arm else "–" for a in arms]
        for first, second in ENSEMBLES:
            if first in by_arm and second in by_arm:
                mean = (np.asarray(by_arm[first]["test_probabilities"]) + np.asarray(by_arm[second]["test_probabilities"])) / 2
                row.append(f"{100 * accuracy(mean, by_arm[first]['targets']):.1f}")
            else:
                row.append("–")
        lines.append(f"| {task} | {seed} | " + " | ".join(row) + " |")
    lines += ["", "## Cost and machine", "", "| task | seed | arm | train s | wall s | best step | load avg (1 min, before/after) | CPU |",
              "|---|---|---|---|---|---|---|---|"]
    for key, record in sorted(store.items()):
        task, seed, arm = key.split("/")
        lines.append(f"| {task} | {seed} | {arm} | {record.get('train_seconds', 0):.0f} | {record['wall_seconds']:.0f} "
                     f"| {record.get('best_step', '–')} | {record['loadavg_before'][0]:.1f} / {record['loadavg_after'][0]:.1f} "
                     f"| {record['cpu']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "report"))
    parser.add_argument("--task", default="sst-2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--arm", default="zero-shot")
    args = parser.parse_args(argv)
    if args.action == "run":
        key = f"{args.task}/{args.seed}/{args.arm}"
        if key in load():
            print(f"{key}: already in {STORE.name}")
        else:
            record = run_arm(args.task, args.seed, args.arm)
            with open(Path(tempfile.gettempdir()) / "pretune-levers.lock", "w") as lock:  # two calls may finish at once
                fcntl.flock(lock, fcntl.LOCK_EX)
                store = load()  # read again: another call may have finished meanwhile
                store[key] = record
                save(store)
            print(f"{key}: test accuracy {100 * record['test']['accuracy']:.1f}, wall {record['wall_seconds']:.0f} s")
    text = report(load())
    (RESULTS / "levers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
