"""Runs one Python recipe of docs/clients.md as a service would run it, with any venv's
interpreter: ``python run_recipe.py RECIPE.py RESULT.json``.

The recipe runs as ``__main__``, unchanged; only ``print`` is wrapped, so that the test sees
each call's arguments (a stream's chunks one by one) as well as the output. The result file
holds ``{"prints": [[str(arg), ...], ...], "error": null | {"type", "message"}}``. No imports
from the gateway: the recipe's venv may not have it.
"""

from __future__ import annotations

import builtins
import json
import sys
from typing import Any


def main() -> None:
    source_path, result_path = sys.argv[1], sys.argv[2]
    with open(source_path, encoding="utf-8") as file:
        source = file.read()
    prints: list[list[str]] = []

    def recording_print(*args: Any, **kwargs: Any) -> None:
        prints.append([str(arg) for arg in args])
        builtins.print(*args, **kwargs)

    error: dict[str, str] | None = None
    try:
        exec(
            compile(source, source_path, "exec"), {"__name__": "__main__", "print": recording_print}
        )
    except Exception as exc:  # the test decides whether this recipe may fail, and how
        error = {"type": type(exc).__name__, "message": str(exc)}
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump({"prints": prints, "error": error}, file)


if __name__ == "__main__":
    main()
