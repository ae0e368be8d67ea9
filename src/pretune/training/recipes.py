"""Pattern ensembles (PET): one model per pattern, their label distributions averaged, and
optionally distilled into one model on unlabelled examples.

Every member starts from the same pretrained weights and trains on its own pattern; only its
trainable weights are kept (for LoRA or BitFit a few megabytes, for full fine-tuning a copy of
the body). The ensemble's distribution is the weighted mean of the members' label
probabilities; with `ensemble_weighting=dev` a member's weight is its accuracy on dev before
training, as in PET, so a pattern that suits the model counts more. Distillation trains one final
model (the first pattern) on the ensemble's soft labels, softened by a temperature (PET: 2); then
only that model is saved.

Saved weights say which of the three a run holds: plain names (one pattern),
`members.<i>.<name>` + `ensemble.weights` (an ensemble), or `distilled.<name>` (a distilled model).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

# A module import: the trainer imports the methods, and PET imports this module (a cycle by name only).
from . import trainer as training

log = logging.getLogger(__name__)

MEMBERS, WEIGHTS, DISTILLED = "members.", "ensemble.weights", "distilled."


class Ensemble:
    """The members' weights and mixing weights of a method with several prompts."""

    def __init__(self, size: int):
        self.size = size
        self.weights = torch.full((size,), 1.0 / size)
        self.members: list[dict[str, torch.Tensor]] = []  # empty: every member uses the model's weights
        self.distilled = False
        self.loaded: int | None = None  # the member whose weights the model holds now

    # -- scoring -----------------------------------------------------------------------------
    def scores(self, method, prompt_batches: dict[int, dict]) -> torch.Tensor:
        """log of the weighted mean of the members' label probabilities, for one batch."""
        # Start with the member already loaded: swapping a fully fine-tuned member copies the whole body.
        order = sorted(prompt_batches, key=lambda index: index != self.loaded)
        mixture = 0.0
        for index in order:
            self.load(method, index)
            probabilities = method.prompt_scores(index, prompt_batches[index]).float().softmax(dim=-1)
            mixture = mixture + self.weights[index].to(probabilities.device) * probabilities
        return mixture.clamp_min(1e-12).log()

    def load(self, method, index: int) -> None:
        if self.members and self.loaded != index:
            method.load_member(self.members[index])
            self.loaded = index

    def distributions(self, method, items: list[dict], batch_size: int, temperature: float = 1.0) -> torch.Tensor:
        """The ensemble's label distributions [N, C] over many items, member by member (one swap each)."""
        mixture = 0.0
        for index in range(self.size):
            self.load(method, index)
            scores = _prompt_scores(method, index, items, batch_size)
            mixture = mixture + self.weights[index] * (scores / temperature).softmax(dim=-1)
        return mixture

    # -- saving ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"{MEMBERS}{i}.{name}": tensor for i, member in enumerate(self.members) for name, tensor in member.items()}
        state[WEIGHTS] = self.weights.clone()
        return state

    @staticmethod
    def holds_members(state: dict) -> bool:
        return WEIGHTS in state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = state[WEIGHTS].float()
        self.members = [{} for _ in range(self.size)]
        for key, tensor in state.items():
            if key.startswith(MEMBERS):
                index, name = key[len(MEMBERS) :].split(".", 1)
                self.members[int(index)][name] = tensor
        self.loaded = None


def fit_ensemble(method, trainer, train_items, train_targets, dev_items, dev_targets, unlabelled) -> training.TrainResult:
    """Train one model per prompt from the same start, then (if asked) distil them into one."""
    ensemble, config = method.ensemble, method.config
    if config.ensemble_weighting == "dev":
        ensemble.weights = _accuracy_weights(method, dev_items or train_items, dev_targets or train_targets, trainer)
    start = _cpu(method.trainable_state_dict())
    members, results = [], []
    for index, prompt in enumerate(method.prompts):
        log.info("ensemble member %d/%d: pattern '%s'", index + 1, len(method.prompts), prompt.pattern)
        method.load_trainable_state_dict(start)
        method.in_use = [index]
        results.append(trainer.fit(train_items, train_targets, dev_items, dev_targets))
        members.append(_cpu(method.trainable_state_dict()))
    ensemble.members, ensemble.loaded = members, len(members) - 1
    method.in_use = list(range(len(method.prompts)))
    method.forget_calibration()
    if config.distil:
        results.append(_distil(method, trainer, start, unlabelled, dev_items, dev_targets))
    return _combined(results, distilled=config.distil)


def _distil(method, trainer, start, unlabelled, dev_items, dev_targets) -> training.TrainResult:
    """Train the first prompt's model, from the pretrained start, on the ensemble's soft labels."""
    items = method.featurize(unlabelled, progress=False)
    batch_size = trainer.config.eval_batch_size
    soft = method.ensemble.distributions(method, items, batch_size, method.config.distil_temperature)
    log.info("distilling the ensemble into one model on %d unlabelled examples", len(items))
    method.ensemble.members, method.ensemble.loaded, method.ensemble.distilled = [], None, True
    method.in_use = [0]
    method.load_trainable_state_dict(start)
    return trainer.fit(items, soft.tolist(), dev_items, dev_targets)


def _accuracy_weights(method, items, targets, trainer) -> torch.Tensor:
    """Each prompt's accuracy before training, normalised: PET's weighting of its ensemble."""
    accuracies = []
    for index in range(len(method.prompts)):
        predictions = _prompt_scores(method, index, items, trainer.config.eval_batch_size).argmax(dim=-1)
        accuracies.append(float(np.mean(predictions.numpy() == np.asarray(targets))))
    log.info("ensemble weights from accuracy before training: %s", ", ".join(f"{a:.3f}" for a in accuracies))
    weights = torch.tensor(accuracies)
    return weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1.0 / len(weights))


def _prompt_scores(method, index: int, items: list[dict], batch_size: int) -> torch.Tensor:
    in_use = method.in_use
    method.in_use = [index]
    try:
        return training.score(method, items, batch_size)
    finally:
        method.in_use = in_use


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def _combined(results: list[training.TrainResult], distilled: bool) -> training.TrainResult:
    """One summary of the phases: members (and distillation), each history row tagged with its phase.
    The best dev metric is the distilled model's, else the members' mean."""
    history = [{"phase": phase, **row} for phase, result in enumerate(results) for row in result.history]
    seconds = sum(r.train_seconds for r in results)
    examples = sum(r.examples_per_second * r.train_seconds for r in results)
    devs = [r.best_dev for r in (results[-1:] if distilled else results) if r.best_dev is not None]
    return training.TrainResult(
        steps=sum(r.steps for r in results),
        best_step=results[-1].best_step,
        best_dev=float(np.mean(devs)) if devs else None,
        history=history,
        train_seconds=seconds,
        examples_per_second=examples / seconds if seconds > 0 else 0.0,
        stopped_early=any(r.stopped_early for r in results),
    )
