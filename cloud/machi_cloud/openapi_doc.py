"""Print the service's OpenAPI document: `python -m machi_cloud.openapi_doc > docs/openapi.json`.

The copy in docs/ lets integrators read the API without running it; a test keeps it equal to
what the app serves.
"""

from __future__ import annotations

import json
import sys

from .app import create_app
from .settings import Settings


def document() -> str:
    """The OpenAPI document as stable, indented JSON with a final newline."""
    return json.dumps(create_app(Settings()).openapi(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
