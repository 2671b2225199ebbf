"""What the apps print: one console (wide enough for tables when piped) and the tables they share."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

# Tables are wide; when output is not a terminal (CI, pipes) Rich would assume 80 columns and truncate them.
console = Console(width=None if Console().is_terminal else 160)


def table(title: str, rows: list[tuple], columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    return table



def print_results(results: dict) -> None:
    from vistaste.towers.evaluation import results_table

    for line in results["protocol"]:  # the protocol first: a table means nothing without it
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for name, block in results["slices"].items():
        frame = results_table(results, name)
        rows = [(method, *[f"{v:.4f}" for v in values]) for method, values in zip(frame.index, frame.to_numpy())]
        console.print(table(f"{name}: {block['users']} evaluable users (of {results['test_users_total']} active in the test period)", rows,
                            ("method", *frame.columns)))
