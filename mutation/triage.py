"""Score a cosmic-ray session, leaving out the mutants that change only a type annotation.

    .venv/bin/python mutation/triage.py artifacts/mutation-invalidation.sqlite   # from a clean checkout

With `from __future__ import annotations` (every module of lib/) an annotation is never evaluated,
so `Row | None` mutated into `Row - None` is the same program: such a mutant cannot be killed and
says nothing about the tests. A survivor is called equivalent here only when the module's syntax
tree, annotations removed, is the same before and after it; every other survivor is listed.
"""

from __future__ import annotations

import ast
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path


class _NoAnnotations(ast.NodeTransformer):
    """The tree without its annotations: parameters', returns', and annotated assignments'."""

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AsyncFunctionDef:
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:
            return ast.Pass()
        return ast.Assign(targets=[node.target], value=self.visit(node.value), lineno=node.lineno)


def _shape(source: str) -> str:
    return ast.dump(_NoAnnotations().visit(ast.parse(source)))


def _mutated(source: str, diff: str) -> str:
    """`source` with the one-line replacements of a cosmic-ray diff applied."""
    lines = source.splitlines(keepends=True)
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    for old, new in zip(removed, added, strict=True):
        index = next(i for i, line in enumerate(lines) if line.rstrip("\n") == old)
        lines[index] = new + "\n"
    return "".join(lines)


@dataclass
class Score:
    """A session's mutants: how many ran, were killed, and which survivors matter."""

    total: int
    killed: int
    equivalent: int
    survivors: list[tuple[str, int, str]]  # (operator, line, the mutated line)

    def line(self) -> str:
        """One line: killed over the mutants that can be killed."""
        counted = self.total - self.equivalent
        return (f"{self.killed}/{counted} killed ({100 * self.killed / counted:.1f} %); "
                f"{self.equivalent} equivalent (annotations only) left out of {self.total}")


def score(session: Path) -> Score:
    """Read `session` (a cosmic-ray SQLite file) and triage its survivors."""
    with sqlite3.connect(session) as db:
        rows = db.execute("select s.module_path, s.operator_name, s.start_pos_row, r.test_outcome, r.diff "
                          "from mutation_specs s join work_results r using (job_id)").fetchall()
    total = killed = equivalent = 0
    survivors: list[tuple[str, int, str]] = []
    for module, operator, row, outcome, diff in rows:
        total += 1
        if outcome.lower() != "survived":  # killed, or incompetent (the mutant does not even run): caught
            killed += 1
            continue
        source = Path(module).read_text(encoding="utf-8")
        mutant = _mutated(source, diff)
        try:
            same = _shape(mutant) == _shape(source)
        except SyntaxError:
            same = False
        if same:
            equivalent += 1
        else:
            survivors.append((operator, row, mutant.splitlines()[row - 1].strip()))
    return Score(total, killed, equivalent, sorted(survivors, key=lambda s: s[1]))


def main(argv: list[str]) -> int:
    """Print the score of each session named on the command line, then its survivors."""
    for name in argv:
        result = score(Path(name))
        print(f"{name}: {result.line()}")
        for operator, row, text in result.survivors:
            print(f"  line {row}: {operator.removeprefix('core/')}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
