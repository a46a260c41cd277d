import os
from pathlib import Path

import pytest

# Triton (where installed) can run here only in its interpreter, and it decides interpreted or compiled when it is
# first imported, which any test module (or torch's compiler, imported by one) may do while pytest collects.
os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository; tests needing it skip where it is absent (a user's clone)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (only the project's own fixtures are used then)")
    return SHARED


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    """An empty nnUNet_raw for the converter tests (the other nnUNet_* variables unset)."""
    raw_folder = tmp_path / "raw"
    monkeypatch.setenv("nnUNet_raw", str(raw_folder))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return raw_folder


@pytest.fixture
def busi(tmp_path) -> Path:
    """A small synthetic BUSI source in the distributed layout (3 benign, 2 malignant, 1 normal)."""
    from nnunet_allukan.synthetic import make_synthetic_busi

    return make_synthetic_busi(tmp_path / "busi", n_benign=3, n_malignant=2, n_normal=1, seed=4)


@pytest.fixture(scope="session")
def nnunet_datasets(tmp_path_factory) -> dict:
    """nnUNet_raw / _preprocessed / _results holding the end-to-end tests' three synthetic datasets, planned and
    preprocessed once for the whole session (tests/e2e_datasets.py); returns the environment for nnU-Net's
    console commands. Each test file trains its own models under its own trainer names."""
    from e2e_datasets import write_and_preprocess_all
    from nnunet_commands import nnunet_environment

    root = tmp_path_factory.mktemp("nnunet_e2e")
    env = nnunet_environment(root)
    write_and_preprocess_all(root, env)
    return env


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib figure saved during the test, with its dpi, so that the panels can be checked."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append((self, kwargs.get("dpi")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved
