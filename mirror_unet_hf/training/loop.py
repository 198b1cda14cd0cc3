"""Pieces of the training loop of `train/train.py`: optimizer and LR schedule, the data stream of an epoch
(resumable mid-epoch), the Fission-only loss, the global-batch Dice of data-parallel runs, loss logging
windows and whole-volume validation on all processes."""

from __future__ import annotations

import time

import numpy as np
import torch
from accelerate.utils import gather_object

from ..sliding_window import SlidingWindowSettings
from ..validation import selection_score, summarise, validate
from .arguments import TrainingArguments
from .checkpointing import TrainerState

# a stream tag of its own: numpy's SeedSequence gives [a, b] and [a, b, 0] the same stream
EPOCH_STREAM = 0xE90C


def make_optimizer(args: TrainingArguments, parameters) -> torch.optim.Optimizer:
    """Adam (the paper's), AdamW, or SGD with Nesterov momentum 0.99 (nnU-Net's)."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=args.learning_rate, momentum=0.99, nesterov=True, weight_decay=args.weight_decay
        )
    kind = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)


def make_scheduler(args: TrainingArguments, optimizer) -> torch.optim.lr_scheduler.StepLR:
    """Step decay counted in optimizer updates; by default at 5/8 of the run (the paper: epoch 250 of 400)."""
    decay_every = args.lr_decay_every or max(1, round(args.max_steps * 250 / 400))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every, gamma=args.lr_decay_factor)


def is_due(step: int, every: int, max_steps: int) -> bool:
    """Whether a periodic action (logging, validation, checkpoint) runs after update `step`: every `every`
    updates and after the last one."""
    return step % every == 0 or step == max_steps


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the random draws made when an epoch's data stream starts (the DataLoader's base seed, from
    which PyTorch seeds its workers): a function of `(seed, epoch)` only."""
    return int(np.random.SeedSequence([seed, epoch, EPOCH_STREAM]).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_batches(accelerator, loader, train_set, state: TrainerState, seed: int):
    """The batches of the prepared loader for `state.epoch`, past those of it already seen (a resumed run).

    A DataLoader draws its workers' base seed from the global torch RNG each time an epoch starts. That draw
    happens at the epoch's start in an uninterrupted run but right after the restored RNG state in a resumed
    one, so every later draw of the global stream (dropout) would differ. The epoch is therefore started inside
    a forked RNG seeded by `epoch_seed(seed, epoch)`: the global stream is left as it was, and the workers'
    seeds depend on `(seed, epoch)` alone, whatever the number of workers or processes.
    """
    batches = loader
    if state.batches_in_epoch:
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch)
    # Accelerate's loaders call dataset.set_epoch(<times this loader object was iterated>) when iterated:
    # set that counter, or a resumed run (a fresh loader) would replay epoch 0's patches.
    batches.set_epoch(state.epoch)
    train_set.set_epoch(state.epoch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(seed, state.epoch))
        iterator = iter(batches)
        first = next(iterator, None)  # Accelerate's loaders create the DataLoader iterator here
    if first is None:  # a resumed run whose checkpoint ended the epoch
        return
    yield first
    yield from iterator


class AllReduceSum(torch.autograd.Function):
    """Sum of a tensor over all processes, differentiable: the backward pass sums the gradients over the
    processes too, so that after DDP averages the parameter gradients, a loss term computed from the
    summed tensor gets exactly the gradient it would get in one process holding the whole batch."""

    @staticmethod
    def forward(ctx, tensor):
        return summed_over_processes(tensor)

    @staticmethod
    def backward(ctx, grad):
        return summed_over_processes(grad)


def summed_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` summed over all processes (not differentiable: `AllReduceSum` wraps it)."""
    total = tensor.clone(memory_format=torch.contiguous_format)
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`AllReduceSum` when several processes train, the tensor itself otherwise."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        return AllReduceSum.apply(tensor)
    return tensor


def pool_dice_over_processes(model, accelerator) -> None:
    """A `dice_reduction="batch"` Dice pools the global batch: its sums go through `global_sum`."""
    if accelerator.num_processes > 1 and model.config.dice_reduction == "batch":
        model.dice_sum_reducer = global_sum


def fission_only_loss(out, config, step: int, seed: int):
    """Valindria et al.: one branch, chosen by (seed, step) identically on every process, is trained;
    the other terms enter with weight 0 so every parameter takes part in the backward pass."""
    trainable = [b for b in config.branches if b["task"] != "none"]
    generator = torch.Generator().manual_seed(seed * 100003 + step)
    chosen = trainable[int(torch.randint(len(trainable), (1,), generator=generator))]
    key = f"{chosen['name']}/{chosen['task']}"
    weight = config.lambda_seg if chosen["task"] == "segmentation" else config.lambda_rec
    return weight * out.loss_terms[key] + 0.0 * out.loss


class LossWindow:
    """Mean training loss and update rate since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.started, self.total, self.steps = time.perf_counter(), 0.0, 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.steps += 1

    @property
    def mean(self) -> float:
        return self.total / self.steps

    @property
    def rate(self) -> float:
        """Updates per second."""
        return self.steps / (time.perf_counter() - self.started)


class Evaluator:
    """Whole-volume validation of the validation studies, split between the processes and gathered, with the
    sliding window of `predict`; the summary has the task's groups too (`fdg/dice`, `psma/dice`, ...)."""

    def __init__(self, accelerator, studies, task: str, settings: SlidingWindowSettings):
        self.accelerator = accelerator
        self.studies = studies
        self.task = task
        self.settings = settings

    def __call__(self, model) -> dict:
        """Summary metrics over all validation studies (every process gets them); leaves `model` in train mode."""
        model.eval()
        bare = self.accelerator.unwrap_model(model)
        with self.accelerator.split_between_processes(list(range(len(self.studies)))) as mine:
            rows = validate(bare, (self.studies[i] for i in mine), self.task, self.settings)
        rows = gather_object(rows)
        model.train()
        return summarise(sorted(rows, key=lambda r: r["case_id"]), self.task)

    def score(self, metrics: dict) -> float:
        """The number that picks `best/` (higher is better)."""
        return selection_score(metrics, self.task)
