"""`nestkit.exclude_cuts`: a list of cut ids that training replaces by deterministic substitutes.

One cut id per line; `#` starts a comment (whole line or after the id); blank lines are ignored.
The cuts stay in the plan, so its signature, the batches' positions and the step count do not
change: the dataset treats an excluded cut exactly as a cut that fails to load (a substitute drawn
from the plan's cuts, a quarantine record of kind "excluded"). That is what lets a run drop the
utterances an anomaly named and `--resume` exactly where it was.
"""

from __future__ import annotations

from pathlib import Path

from nestkit.core.errors import NestkitError

MAX_NAMED = 10  # unknown ids named in one error


def read_exclusions(path: str | Path) -> dict[str, int]:
    """cut id -> the line that lists it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NestkitError(
            f"nestkit.exclude_cuts {path}: no such file (expected a text file with one cut id per line). "
            "Create it, or remove the setting"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NestkitError(f"nestkit.exclude_cuts {path}: cannot be read ({exc})") from None
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        cut_id = line.split("#", 1)[0].strip()
        if cut_id:
            found.setdefault(cut_id, number)
    return found


def check_exclusions(listed: dict[str, int], index, path: str | Path) -> frozenset[str]:
    """The listed ids, after checking that every one names a cut of the training manifests (a typo
    would leave the culprit in training without a word)."""
    unknown = {cut_id: line for cut_id, line in listed.items() if index.find(cut_id) is None}
    if unknown:
        named = [f"{path}:{line}: cut {cut_id}" for cut_id, line in list(unknown.items())[:MAX_NAMED]]
        more = f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED else ""
        raise NestkitError(
            f"nestkit.exclude_cuts {path}: {len(unknown)} cut id(s) not in the training manifests "
            f"(expected ids of model.train_ds cuts, got {'; '.join(named)}{more}). NeMo cut ids are "
            "<audio file stem>-L<manifest line>; `nestkit anomalies RUN --format ids` prints an incident's"
        )
    return frozenset(listed)


def load_exclusions(path: str | Path | None, index) -> frozenset[str]:
    if not path:
        return frozenset()
    return check_exclusions(read_exclusions(path), index, path)
