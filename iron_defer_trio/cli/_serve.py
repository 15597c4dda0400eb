"""`iron-defer-trio serve` (placeholder until the server lands)."""

from __future__ import annotations

import typer


def serve_command() -> None:
    """Run the engine, the sweeper and the REST API (not implemented yet)."""
    typer.echo("serve is not implemented yet", err=True)
    raise typer.Exit(1)
