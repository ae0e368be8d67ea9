"""iPET (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification and NLI",
§3.3): a pattern ensemble trained in generations, the models of one generation teaching the next.

Generation 1 is PET's ensemble: one model per pattern, trained on the labelled set T. In generation
g > 1 every member is trained again from the pretrained start, on T plus texts of the unlabelled pool
D that other members of generation g - 1 labelled:

1. a random subset N of the other members (never the member itself), of size ceil(λ (n - 1)) with
   λ = 0.25 as in the paper (so one other member for n <= 5 patterns), drawn with the run's seed;
2. every text of D gets the hard label argmax of N's mixture, s_N(l|x) = Σ_j w_j p_j(l|x) / Σ_j w_j
   (the ensemble's weights, see `--ensemble-weighting`; uniform over N if all of them are 0);
3. per label l, the c_g(l) = |T(l)| (d^(g-1) - 1) texts labelled l that N is most confident about
   (highest s_N(l|x); a tie goes to the text earlier in the file) join T; fewer where fewer texts got
   label l. So generation g trains on d^(g-1) |T| examples, the labels in T's proportions
   (d: `--generation-growth`, the paper's 5).

The last generation is the ensemble that predicts, or (`--distil`) that labels D for distillation,
as in PET. Where this differs from the paper: step 3 keeps the most confident texts, where the paper
draws c_g(l) of them at random with probabilities proportional to s_N(l|x) (the same preference for
confident labels, made deterministic); s_N mixes the members' probabilities (how this package's
ensembles mix), where the paper mixes their unnormalised scores; and zero-shot iPET (T empty), which
the paper handles with its own rule, is not offered (training needs labelled examples).

Each member of each generation is a stage of the trainer (generation g, member i: stage
(g - 1) n + i; distillation the last), so resuming and history.jsonl see every one of them. What each
generation added, and each member's dev metric, is the run's `train.generations` (metrics.json).
"""

from __future__ import annotations

import logging
import math
import random

import torch

from .recipes import PatternEnsemble
from .trainer import Trainer, TrainResult

log = logging.getLogger(__name__)

LABELLER_FRACTION = 0.25  # λ: the part of the other members that labels for a member (the paper's value)


def added_per_label(train_targets: list[int], labels: int, growth: int, generation: int) -> list[int]:
    """c_g(l): how many pseudo-labelled texts of each label generation `generation` (1: PET) adds."""
    counts = [0] * labels
    for target in train_targets:
        counts[target] += 1
    return [count * (growth ** (generation - 1) - 1) for count in counts]


def labellers(draw: random.Random, member: int, members: int) -> list[int]:
    """The random subset of the other members that labels the pool for `member`, in member order."""
    others = [index for index in range(members) if index != member]
    size = max(1, math.ceil(LABELLER_FRACTION * len(others)))
    return sorted(draw.sample(others, size))


def mixture(distributions: list[torch.Tensor], weights: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    """s_N: the chosen members' weighted mixture of label distributions [N, C]."""
    chosen_weights = weights[chosen].float()
    if chosen_weights.sum() <= 0:
        chosen_weights = torch.ones(len(chosen))
    chosen_weights = chosen_weights / chosen_weights.sum()
    return sum(weight * distributions[index] for weight, index in zip(chosen_weights, chosen))


def most_confident(distribution: torch.Tensor, counts: list[int]) -> tuple[list[int], list[int]]:
    """(pool indices, hard labels) of the texts kept: per label, up to counts[l] of those labelled l,
    by confidence (ties: pool order). Label by label, most confident first."""
    hard = distribution.argmax(dim=-1)
    indices, labels = [], []
    for label, count in enumerate(counts):
        candidates = (hard == label).nonzero().flatten()
        confidence = distribution[candidates, label]
        order = torch.argsort(confidence, descending=True, stable=True)[:count]
        kept = candidates[order].tolist()
        indices += kept
        labels += [label] * len(kept)
    return indices, labels


class IteratedEnsemble(PatternEnsemble):
    """A pattern ensemble trained in generations (iPET); scores, saves and loads as PET's ensemble."""

    def __init__(self, members):
        super().__init__(members)
        self.generations: list[dict] = []  # what each generation trained on, and its members' dev metric

    def fit(self, trainer: Trainer, train_items, train_targets, dev_items, dev_targets) -> TrainResult:
        result = super().fit(trainer, train_items, train_targets, dev_items, dev_targets)
        result.generations = self.generations
        return result

    def _train(self, trainer: Trainer, start, train_items, train_targets, dev_items, dev_targets) -> list[TrainResult]:
        pool = self.config.unlabelled_examples()
        pool_items = [member.featurize(pool, progress=False) for member in self.members]
        draw = random.Random(trainer.config.seed)
        training_sets = [(items, train_targets) for items in train_items]
        # each member's labellers and pseudo-labels (pool index, label); none in generation 1
        added: list[tuple[list[int], list[tuple[int, int]]]] = [([], []) for _ in self.members]
        results, self.generations = [], []
        for generation in range(1, self.config.generations + 1):
            if generation > 1:
                added = self._pseudo_labels(draw, pool_items, train_targets, generation, trainer.config.eval_batch_size)
                training_sets = [(items + [member_pool[i] for i, _ in picks], train_targets + [y for _, y in picks])
                                 for items, member_pool, (_, picks) in zip(train_items, pool_items, added)]
            log.info("iPET generation %d/%d: %s training examples per member", generation, self.config.generations,
                     ", ".join(str(len(items)) for items, _ in training_sets))
            trained = self.train_members(trainer, start, training_sets, dev_items, dev_targets, first_stage=len(results))
            results += trained
            self.generations.append(self._record(generation, added, trained))
        return results

    def _pseudo_labels(self, draw: random.Random, pool_items, train_targets, generation: int,
                       batch_size: int) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """For each member, the other members of the last generation that labelled the pool for it, and the
        pool texts (index, label) kept."""
        distributions = self.member_distributions(pool_items, batch_size, temperature=1.0)  # hard labels: no softening
        counts = added_per_label(train_targets, len(self.task.labels), self.config.generation_growth, generation)
        added = []
        for member in range(len(self.members)):
            chosen = labellers(draw, member, len(self.members))
            indices, labels = most_confident(mixture(distributions, self.weights, chosen), counts)
            added.append((chosen, list(zip(indices, labels))))
        return added

    def _record(self, generation: int, added, trained: list[TrainResult]) -> dict:
        """One generation as metrics.json keeps it: per member, which members labelled for it, the
        pseudo-labelled texts added per label, and the dev metric of the state kept."""
        members = []
        for member, (chosen, picks), result in zip(self.members, added, trained):
            per_label = {name: sum(1 for _, y in picks if y == label) for label, name in enumerate(self.task.labels)}
            members.append({"pattern": str(member.prompt.pattern), "labelled_by": chosen, "pseudo_labelled": per_label,
                            f"dev_{self.task.metric}": result.best_dev})
        return {"generation": generation, "members": members}
