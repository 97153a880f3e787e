"""Small helpers shared by the typer command modules (kept free of heavy imports)."""

from __future__ import annotations

import functools

import typer


def input_errors_exit_2(func):
    """Map our documented input errors (:class:`~qc.errors.QCInputError`) to a one-line message on stderr and
    exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from qc.errors import QCInputError

        try:
            return func(*args, **kwargs)
        except QCInputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper
