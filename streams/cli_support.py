"""Pieces the command-line modules share: the error console, rule loading, common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset

err = Console(stderr=True)

RulesDir = Annotated[Path, typer.Argument(help="rules directory")]
RulesOpt = Annotated[Path, typer.Option("--rules", help="rules directory")]


def load_ruleset_or_exit(rules_dir: Path) -> Ruleset:
    """Load a ruleset, or print every problem (file:line: what — fix) and exit 2."""
    try:
        return load_ruleset(rules_dir)
    except RulesetError as exc:
        err.print(f"[red]rules refused[/red] ({len(exc.problems)} problem(s)):", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(2) from None
