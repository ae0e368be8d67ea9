"""Recipes: how a run trains its method(s), above the trainer.

- one method: one stage of the trainer, with PET's auxiliary language-modelling loss if asked;
- a pattern ensemble (PET): one model per pattern, every member from the same pretrained start and
  trained on its own pattern (stage i), their label distributions averaged; optionally distilled
  into one model on unlabelled examples (the last stage);
- iPET (`ipet`): the ensemble trained in generations, each on pseudo-labels of the one before.

A recipe owns what it trains: the ensemble holds its members' trained weights and mixing weights;
a member is a plain cloze method with one prompt (the members share the body, whose trained state
the ensemble swaps in before a member scores). Only a member's trainable weights are kept (for LoRA
or BitFit a few megabytes, for full fine-tuning a copy of the body). With `ensemble_weighting=dev`
a member's weight is its accuracy on dev before training, as in PET. Distillation trains the first
pattern's model on the ensemble's soft labels, softened by a temperature (PET: 2); then only that
model is saved.

Saved weights say which of the three a run holds: plain names (one model),
`members.<i>.<name>` + `ensemble.weights` (an ensemble), or `distilled.<name>` (a distilled model).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..methods import ClozeConfig, Method
from .trainer import Trainer, TrainResult

log = logging.getLogger(__name__)

MEMBERS, WEIGHTS, DISTILLED = "members.", "ensemble.weights", "distilled."


def tuned(methods: list[Method]):
    """What a run trains and predicts with: the method, or the ensemble of its members (iPET's, trained
    in generations, with `--generations` above 1)."""
    if len(methods) == 1:
        return methods[0]
    if methods[0].config.generations > 1:
        from .ipet import IteratedEnsemble  # here: ipet builds on this module's ensemble

        return IteratedEnsemble(methods)
    return PatternEnsemble(methods)


def fit(model, trainer: Trainer, train_items, train_targets, dev_items=None, dev_targets=None) -> TrainResult:
    """Train a run's method or ensemble with the trainer, stage by stage."""
    if isinstance(model, PatternEnsemble):
        return model.fit(trainer, train_items, train_targets, dev_items, dev_targets)
    return trainer.fit(model, train_items, train_targets, dev_items, dev_targets, stage=0,
                       extra_loss=auxiliary_loss(model, train_items))


# ---------------------------------------------------------------- PET's auxiliary LM loss


class AuxiliaryLM:
    """PET's auxiliary language-modelling loss: keep the LM an LM while it learns the task. Texts
    rendered through the method's pattern, as in training, do the model's pre-training task (see
    `cloze.lm`); the weighted loss is added to each training step (PET: 1e-4 of the loss)."""

    def __init__(self, method, items: list, weight: float, batch_size: int):
        self.method, self.items, self.weight, self.batch_size = method, items, weight, batch_size

    def __call__(self) -> torch.Tensor | None:
        method = self.method
        if not (method.training and self.items):
            return None
        picks = torch.randint(len(self.items), (self.batch_size,)).tolist()
        batch = method.lm.language_modelling_batch([self.items[i] for i in picks], method.prompt.renderer)
        if batch is None:
            return None
        batch = batch.to(method.device)
        outputs = method.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels,
                               **method.lm.body_arguments)
        return self.weight * outputs.loss


def auxiliary_loss(method: Method, train_items: list) -> AuxiliaryLM | None:
    """The auxiliary loss a method's configuration asks for, reading the unlabelled texts (else the training texts)."""
    config = method.config
    if not (isinstance(config, ClozeConfig) and config.aux_lm_weight):
        return None
    unlabelled = config.unlabelled_examples()
    items = method.featurize(unlabelled, progress=False) if unlabelled else train_items
    return AuxiliaryLM(method, items, config.aux_lm_weight, config.aux_batch_size)


# ---------------------------------------------------------------- pattern ensembles


class PatternEnsemble:
    """Cloze methods, one per pattern, over one shared body; scores like one method.

    Items are featurized per member: a list with each member's items."""

    def __init__(self, members: list[Method]):
        self.members = members
        self.config, self.task, self.name = members[0].config, members[0].task, members[0].name
        self.weights = torch.full((len(members),), 1.0 / len(members))
        self.states: list[dict[str, torch.Tensor]] = []  # each member's trained weights; empty: the body's own
        self.distilled = False  # after distillation the first member alone predicts
        self.loaded: int | None = None  # the member whose weights the body holds now

    @property
    def active(self) -> list[Method]:
        return self.members[:1] if self.distilled else self.members

    # -- scoring -----------------------------------------------------------------------------
    def featurize(self, examples, progress: bool = True) -> list[list]:
        return [member.featurize(examples, progress) for member in self.active]

    def label_scores(self, examples, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        return self.score_items(self.featurize(examples, progress), batch_size, progress)

    def score_items(self, items: list[list], batch_size: int = 32, progress: bool = False, desc: str = "scoring") -> torch.Tensor:
        """log of the weighted mean of the members' label probabilities (the distilled model's scores)."""
        if self.distilled:
            return self.members[0].score_items(items[0], batch_size, progress, desc)
        return self.distributions(items, batch_size).clamp_min(1e-12).log()

    def distributions(self, items: list[list], batch_size: int, temperature: float = 1.0) -> torch.Tensor:
        """The ensemble's label distributions [N, C]: its members' weighted mixture."""
        mixture = 0.0
        for weight, distribution in zip(self.weights, self.member_distributions(items, batch_size, temperature)):
            mixture = mixture + weight * distribution
        return mixture

    def member_distributions(self, items: list[list], batch_size: int, temperature: float) -> list[torch.Tensor]:
        """Each member's label distributions [N, C], member by member (one weight swap each)."""
        distributions = []
        for index, member_items in enumerate(items):
            self._load(index)
            scores = self.members[index].score_items(member_items, batch_size)
            distributions.append((scores / temperature).softmax(dim=-1))
        return distributions

    def _load(self, index: int) -> None:
        if self.states and self.loaded != index:
            self.members[index].load_trainable_state_dict(self.states[index])
            self.loaded = index

    # -- training --------------------------------------------------------------------------------
    def fit(self, trainer: Trainer, train_items, train_targets, dev_items, dev_targets) -> TrainResult:
        """Train one model per pattern from the same start (stage i), then (if asked) distil them (last stage)."""
        if self.config.ensemble_weighting == "dev":
            self.weights = self._accuracy_weights(dev_items or train_items, dev_targets or train_targets,
                                                  trainer.config.eval_batch_size)
        start = _cpu(self.members[0].trainable_state_dict())
        results = self._train(trainer, start, train_items, train_targets, dev_items, dev_targets)
        if self.config.distil:
            results.append(self._distil(trainer, start, dev_items, dev_targets, stage=len(results)))
        return _combined(results, distilled=self.config.distil)

    def _train(self, trainer: Trainer, start, train_items, train_targets, dev_items, dev_targets) -> list[TrainResult]:
        """PET: each member once, on the labelled examples (iPET trains generations: `ipet`)."""
        training_sets = [(items, train_targets) for items in train_items]
        return self.train_members(trainer, start, training_sets, dev_items, dev_targets, first_stage=0)

    def train_members(self, trainer: Trainer, start, training_sets: list[tuple[list, list]], dev_items, dev_targets,
                      first_stage: int) -> list[TrainResult]:
        """Train every member from `start` on its (items, targets), as stages `first_stage`, `first_stage + 1`, ...;
        the ensemble then holds their trained states."""
        states, results = [], []
        for index, (member, (items, targets)) in enumerate(zip(self.members, training_sets)):
            log.info("ensemble member %d/%d: pattern '%s'", index + 1, len(self.members), member.prompt.pattern)
            member.load_trainable_state_dict(start)
            dev = dev_items[index] if dev_items else None
            results.append(trainer.fit(member, items, targets, dev, dev_targets, stage=first_stage + index,
                                       extra_loss=auxiliary_loss(member, items)))
            states.append(_cpu(member.trainable_state_dict()))
        self.states, self.loaded = states, len(states) - 1
        return results

    def _distil(self, trainer: Trainer, start, dev_items, dev_targets, stage: int) -> TrainResult:
        """Train the first pattern's model, from the pretrained start, on the ensemble's soft labels."""
        unlabelled = self.config.unlabelled_examples()
        items = [member.featurize(unlabelled, progress=False) for member in self.members]
        soft = self.distributions(items, trainer.config.eval_batch_size, self.config.distil_temperature)
        log.info("distilling the ensemble into one model on %d unlabelled examples", len(unlabelled))
        self.states, self.loaded, self.distilled = [], None, True
        first = self.members[0]
        first.load_trainable_state_dict(start)
        return trainer.fit(first, items[0], soft.tolist(), dev_items[0] if dev_items else None, dev_targets,
                           stage=stage, extra_loss=auxiliary_loss(first, items[0]))

    def _accuracy_weights(self, items: list[list], targets, batch_size: int) -> torch.Tensor:
        """Each pattern's accuracy before training, normalised: PET's weighting of its ensemble."""
        accuracies = []
        for member, member_items in zip(self.members, items):
            predictions = member.score_items(member_items, batch_size).argmax(dim=-1)
            accuracies.append(float(np.mean(predictions.numpy() == np.asarray(targets))))
        log.info("ensemble weights from accuracy before training: %s", ", ".join(f"{a:.3f}" for a in accuracies))
        weights = torch.tensor(accuracies)
        return weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1.0 / len(weights))

    # -- what is saved -----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self.states:
            state = {f"{MEMBERS}{i}.{name}": tensor for i, member in enumerate(self.states) for name, tensor in member.items()}
            state[WEIGHTS] = self.weights.clone()
            return state
        state = self.members[0].trainable_state_dict()
        return {DISTILLED + k: v for k, v in state.items()} if self.distilled else state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if WEIGHTS in state:
            self.weights = state[WEIGHTS].float()
            self.states = [{} for _ in self.members]
            for key, tensor in state.items():
                if key.startswith(MEMBERS):
                    index, name = key[len(MEMBERS) :].split(".", 1)
                    self.states[int(index)][name] = tensor
            self.loaded, self.distilled = None, False
            return
        self.distilled = any(k.startswith(DISTILLED) for k in state)
        self.members[0].load_trainable_state_dict({k.removeprefix(DISTILLED): v for k, v in state.items()})

    def trainable_parameter_count(self) -> int:
        return self.members[0].trainable_parameter_count()

    def parameters(self):
        """Every member's parameters, the shared body once."""
        seen = {}
        for member in self.members:
            seen.update({id(p): p for p in member.parameters()})
        return iter(seen.values())

    # -- the rest of a method's surface -------------------------------------------------------------
    def to(self, device):
        for member in self.members:
            member.to(device)
        return self

    def eval(self):
        for member in self.members:
            member.eval()
        return self

    def finalize(self) -> None:
        for member in self.members:
            member.finalize()


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def _combined(results: list[TrainResult], distilled: bool) -> TrainResult:
    """One summary of the stages: members (and distillation), each history row tagged with its stage
    (`phase`). The best dev metric is the distilled model's, else the members' mean."""
    history = [{"phase": phase, **row} for phase, result in enumerate(results) for row in result.history]
    seconds = sum(r.train_seconds for r in results)
    examples = sum(r.examples_per_second * r.train_seconds for r in results)
    devs = [r.best_dev for r in (results[-1:] if distilled else results) if r.best_dev is not None]
    return TrainResult(
        steps=sum(r.steps for r in results),
        best_step=results[-1].best_step,
        best_dev=float(np.mean(devs)) if devs else None,
        history=history,
        train_seconds=seconds,
        examples_per_second=examples / seconds if seconds > 0 else 0.0,
        stopped_early=any(r.stopped_early for r in results),
    )
