"""The data position a checkpoint carries, and what a resume on another world size does with it.

The position is "micro-batches of the epoch consumed" (plus the epoch, the seed and the plan's
signature), not a per-rank index, so a run can continue on any number of ranks and workers: the
epoch's sequence of micro-batches does not depend on the world size (nestkit.data.plan), and the
new ranks take the next unconsumed micro-batches in rounds.

Checked before training starts, with every problem named at once:
* the plan must be the same (seed, batching settings, the cuts' durations): a different plan
  would make "consumed" count other micro-batches;
* the new world size must be able to train the epoch at all.
And said once: the world size, accumulation and global batch then and now, and what a changed
global batch does to the learning-rate schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestkit.core.errors import ConfigError
from nestkit.data.sampler import DataPosition

DATA_POSITION_KEY = "nestkit_data_position"

# batching settings and the config keys a user changes them with
_SETTING_KEYS = {
    "batch_size": "model.train_ds.batch_size",
    "batch_duration": "model.train_ds.batch_duration",
    "num_buckets": "model.train_ds.num_buckets",
    "shuffle": "model.train_ds.shuffle",
    "drop_last": "model.train_ds.drop_last",
    "min_duration": "model.train_ds.min_duration",
    "max_duration": "model.train_ds.max_duration",
    "seed": "nestkit.seed",
    "order": "model.train_ds.order",
    "shard_window": "model.train_ds.shard_window",
}
# what a checkpoint written before a setting existed planned with
_SETTING_BEFORE_IT_EXISTED = {"order": "global", "shard_window": 4}


@dataclass(frozen=True)
class SavedPosition:
    """What a checkpoint says about the data: where to continue and under which plan."""

    position: DataPosition
    world_size: int | None
    accumulate: int | None
    plan: dict | None  # Planner.signature() when it was saved; None in checkpoints of older nestkit
    step: int | None = None

    def as_dict(self) -> dict:
        return {
            "epoch": self.position.epoch,
            "consumed": self.position.consumed,
            "world_size": self.world_size,
            "accumulate": self.accumulate,
            "plan": self.plan,
            "step": self.step,
        }


def saved_position(checkpoint: dict) -> SavedPosition | None:
    """The data position in a loaded checkpoint (None if it has none)."""
    data = checkpoint.get(DATA_POSITION_KEY)
    if not isinstance(data, dict):
        return None
    if "consumed" not in data:  # nestkit before elastic resume: a per-rank batch index, one rank's view
        return SavedPosition(DataPosition(int(data["epoch"]), int(data["batch"])), None, None, None)
    return SavedPosition(
        DataPosition(int(data["epoch"]), int(data["consumed"])),
        data.get("world_size"),
        data.get("accumulate"),
        data.get("plan"),
        data.get("step"),
    )


def position_after(epoch: int, consumed_after: int, epoch_length: int) -> DataPosition:
    """The next data position after a step that left `consumed_after` micro-batches of `epoch` done."""
    if consumed_after >= epoch_length:
        return DataPosition(epoch + 1, 0)
    return DataPosition(epoch, consumed_after)


def plan_changes(saved: dict, now: dict) -> list[str]:
    """Settings whose change makes the checkpoint's data position meaningless, each named."""
    problems = []
    for key, name in _SETTING_KEYS.items():
        before = saved.get(key, _SETTING_BEFORE_IT_EXISTED.get(key))
        if before != now.get(key):
            problems.append(f"{name}: changed since the checkpoint (expected {before!r}, got {now.get(key)!r})")
    if saved.get("cuts") != now.get("cuts") or saved.get("durations") != now.get("durations"):
        problems.append(
            f"model.train_ds.manifest_filepath: the cuts changed since the checkpoint (expected {saved.get('cuts')} cuts "
            f"with duration digest {saved.get('durations')}, got {now.get('cuts')} with {now.get('durations')})"
        )
    if saved.get("format") != now.get("format"):
        problems.append(
            f"plan format: the checkpoint's plan rule is {saved.get('format')!r}, this nestkit's is {now.get('format')!r}"
        )
    return problems


def check_resume(saved: SavedPosition, plan_now: dict, world_size: int, accumulate: int) -> list[str]:
    """Notes for the user (said once) about the resume; raises ConfigError for one that cannot work."""
    notes: list[str] = []
    if saved.plan is None:
        notes.append(
            "the checkpoint comes from a nestkit without elastic data positions: it continues at "
            f"epoch {saved.position.epoch}, micro-batch {saved.position.consumed} of the epoch, which is exact "
            "only for a run on one rank"
        )
    else:
        problems = plan_changes(saved.plan, plan_now)
        if problems:
            raise ConfigError(
                problems
                + [
                    "resume: the data position counts micro-batches of the checkpoint's plan; with another plan it "
                    "would skip or repeat data. Restore these settings, or start a new run (exp_manager.name=...)"
                ]
            )
    if saved.world_size is not None and saved.accumulate is not None:
        before, after = saved.world_size * saved.accumulate, world_size * accumulate
        layout = (
            f"{world_size} rank(s) x accumulate_grad_batches {accumulate} "
            f"(the checkpoint: {saved.world_size} x {saved.accumulate})"
        )
        if (world_size, accumulate) == (saved.world_size, saved.accumulate):
            pass
        elif before == after:
            notes.append(
                f"resuming on {layout}: the global batch is unchanged ({after} micro-batches per optimizer step), "
                "so every step trains the same micro-batches as the uninterrupted run would"
            )
        else:
            notes.append(
                f"resuming on {layout}: the global batch changes from {before} to {after} micro-batches per optimizer "
                f"step. The learning-rate schedule counts optimizer steps, so from here each step of the schedule sees "
                f"{after / before:.3g}x the data it did; to keep the per-sample schedule, scale model.optim.lr by about "
                f"{after / before:.3g} (AdamW) or trainer.max_steps by {before / after:.3g}. The epoch continues at "
                f"micro-batch {saved.position.consumed}, every cut still used once"
            )
    return notes
