"""Record the annotation-only mutants of a fresh cosmic-ray session as survivors, without running them.

    .venv/bin/cosmic-ray init mutation/settle.toml artifacts/mutation-settle.sqlite
    .venv/bin/python mutation/skip_annotations.py artifacts/mutation-settle.sqlite   # before exec
    .venv/bin/cosmic-ray exec mutation/settle.toml artifacts/mutation-settle.sqlite

A mutant whose module, annotations removed, has the same syntax tree as the original is the same
program (`from __future__ import annotations`: never evaluated), so it cannot be killed and
mutation/triage.py leaves it out of the score anyway; running the tests on it only costs time
(a third of a module's mutants). Its result is stored as worker outcome `skipped`, test outcome
`survived`, with the diff cosmic-ray would have made, so triage.py checks the same tree again and
lists it as a survivor if it is not equivalent after all. `exec` runs only the other mutants.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cosmic_ray.plugins
from cosmic_ray.mutating import _make_diff, mutate_code
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

sys.path.insert(0, str(Path(__file__).parent))
from triage import _shape  # noqa: E402


def skip(session: Path) -> tuple[int, int]:
    """Mark the pending annotation-only mutants of `session`; (marked, pending before)."""
    marked = pending = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            pending += 1
            (spec,) = item.mutations
            source = Path(spec.module_path).read_text(encoding="utf-8")
            operator = cosmic_ray.plugins.get_operator(spec.operator_name)(**(spec.operator_args or {}))
            mutant = mutate_code(source, operator, spec.occurrence)
            try:
                if mutant is None or _shape(mutant) != _shape(source):
                    continue
            except SyntaxError:  # an incompetent mutant: let exec find it so
                continue
            diff = "\n".join(_make_diff(source, mutant, spec.module_path))
            db.set_result(item.job_id, WorkResult(
                worker_outcome=WorkerOutcome.SKIPPED, test_outcome=TestOutcome.SURVIVED,
                output="annotation only: not run", diff=diff))
            marked += 1
    return marked, pending


def main(argv: list[str]) -> int:
    for name in argv:
        marked, pending = skip(Path(name))
        print(f"{name}: {marked} of {pending} pending mutants change only annotations; recorded, not run")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
