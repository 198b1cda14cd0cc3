"""Which studies an epoch of training patches visits, and in which order.

``StudyOrder`` is the sampler's plan, apart from how studies are stored: from the studies of a split it keeps
the eligible ones (all, or with ``positives_only`` those whose label has foreground, as the authors' code trains
on lesion-positive studies unless told otherwise) and, given a group per study (``TaskSpec.case_group``: the
autoPET III/IV tracer), draws equally many studies of every group per epoch. The order of an epoch depends only on
``(seed, epoch)``: the same for every worker and process, and for a resumed run.

Without groups an epoch is a permutation of the eligible studies (with every study eligible, the permutation of
``MirrorPatchDataset``'s first releases, so existing runs draw what they drew). With groups an epoch holds
``ceil(n / g)`` draws of each of the ``g`` groups (``n`` eligible studies): each group's studies in a shuffled
cycle, repeated where a group has fewer studies than that, then everything shuffled. A study drawn twice in an
epoch is visited twice; ``Visit.repeat`` tells the visits apart so each draws its own patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError

# a stream tag of its own: numpy's SeedSequence gives [a, b] and [a, b, 0] the same stream
BALANCE_STREAM = 0xBA1
UNGROUPED = "other"  # the group of a study whose task names none


@dataclass(frozen=True)
class Visit:
    """One study of an epoch's order: its index in the split and how many times it came earlier in the epoch."""

    study: int
    repeat: int = 0


class StudyOrder:
    """The studies of each epoch (see the module docstring).

    Args:
        num_studies: studies in the split.
        positive: a bool per study (label has foreground), needed with ``positives_only``.
        positives_only: draw only the studies ``positive`` marks.
        groups: a group name per study (None: ``UNGROUPED``) to balance over, or None for no balancing.
    """

    def __init__(
        self,
        num_studies: int,
        positive: Sequence[bool] | None = None,
        positives_only: bool = False,
        groups: Sequence[str | None] | None = None,
    ):
        eligible = np.arange(int(num_studies))
        if positives_only:
            if positive is None or len(positive) != num_studies:
                raise ValueError("positives_only needs one lesion-positive flag per study")
            eligible = eligible[np.asarray(positive, dtype=bool)]
            if num_studies and not len(eligible):
                raise UserInputError(
                    f"positives_only leaves no study to train on: none of the {num_studies} has a foreground label"
                )
        self.eligible = eligible
        self.num_studies = int(num_studies)
        self.members: dict[str, np.ndarray] | None = None
        if groups is not None:
            self.members = balanced_groups(eligible, groups, num_studies)

    @property
    def per_group(self) -> int:
        """Draws of each group per epoch (0 without balancing)."""
        if not self.members:
            return 0
        return math.ceil(len(self.eligible) / len(self.members))

    def __len__(self) -> int:
        """Studies visited per epoch."""
        return self.per_group * len(self.members) if self.members else len(self.eligible)

    def epoch(self, seed: int, epoch: int) -> list[Visit]:
        """The visits of one epoch, a function of ``(seed, epoch)`` only."""
        if not self.members:
            order = self.eligible[np.random.default_rng([seed, epoch]).permutation(len(self.eligible))]
            return [Visit(int(study)) for study in order]
        rng = np.random.default_rng([seed, epoch, BALANCE_STREAM])
        draws = np.concatenate([cycled(members, self.per_group, rng) for members in self.members.values()])
        seen: dict[int, int] = {}
        visits = []
        for study in rng.permutation(draws):
            visits.append(Visit(int(study), seen.get(int(study), 0)))
            seen[int(study)] = visits[-1].repeat + 1
        return visits

    def describe(self) -> str:
        """One line for the run header: how many studies an epoch draws, and from what."""
        text = f"{len(self)} studies per epoch"
        if len(self.eligible) < self.num_studies:
            text += f", from the {len(self.eligible)} lesion-positive of {self.num_studies}"
        if self.members:
            sizes = ", ".join(f"{name} {len(members)}" for name, members in self.members.items())
            text += f", {self.per_group} of each group ({sizes} studies)"
        return text


def balanced_groups(eligible: np.ndarray, groups: Sequence[str | None], num_studies: int) -> dict[str, np.ndarray]:
    """Group name -> its eligible studies (sorted by name); ``UserInputError`` unless there are two groups or more."""
    if len(groups) != num_studies:
        raise ValueError(f"groups has {len(groups)} entries for {num_studies} studies")
    names = [UNGROUPED if groups[i] is None else str(groups[i]) for i in eligible]
    members = {name: eligible[[n == name for n in names]] for name in sorted(set(names))}
    if len(members) < 2:
        found = next(iter(members), UNGROUPED)
        where = "no study here has a group" if found == UNGROUPED else f"every study here is in group {found!r}"
        raise UserInputError(
            f"balance_groups needs training studies of two groups or more (autoPET III/IV: fdg and psma); {where}"
        )
    return members


def cycled(members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` studies of ``members``: shuffled cycles through all of them, the last one cut short."""
    cycles = [rng.permutation(members) for _ in range(math.ceil(count / len(members)))]
    return np.concatenate(cycles)[:count]
