"""Which models a conversation may use: the endpoint's list minus the user's filter file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["NoModelsError", "eligible_models", "read_model_filter"]


class NoModelsError(RuntimeError):
    """The endpoint listed no model that the filter leaves in."""


def read_model_filter(path: str | Path, required: bool = False) -> set[str]:
    """Model names to leave out, one a line; blank lines and ``#`` comments are ignored.

    A missing file means no filter, unless the user named the file explicitly (``required``).
    """
    file = Path(path)
    if not file.is_file():
        if required:
            raise FileNotFoundError(f"--model-filter {file}: file not found")
        return set()
    names = set()
    for line in file.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return names


def eligible_models(listed: list[str], excluded: set[str]) -> list[str]:
    """The listed models not excluded, in the endpoint's order; raise NoModelsError if none is left."""
    models = [name for name in listed if name not in excluded]
    if not models:
        raise NoModelsError(
            f"the endpoint lists {len(listed)} model(s) ({', '.join(listed) or 'none'}) and the model filter "
            "leaves none: set --model, or remove names from the filter file"
        )
    return models
