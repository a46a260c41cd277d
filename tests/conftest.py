import os
from pathlib import Path

import pytest

# Tests use the eager basis kernels (no torch.compile start-up cost); test_layers_compile.py checks the
# compiled kernels against them explicitly.
os.environ.setdefault("NNUNET_ALLUKAN_COMPILE", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository; tests needing it skip where it is absent (a user's clone)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (only the project's own fixtures are used then)")
    return SHARED
