"""The SD1.5 end-to-end checks of test_generate.py, for the tiny SDXL model (two text encoders,
pooled embeddings, add_time_ids, a separate VAE path)."""

from __future__ import annotations

import pytest
from generate_helpers import build_models, write_prompts
from test_generate import check_six_prompts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), ("sdxl",))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "six.json")


def test_six_prompts_reference_layout_and_batch_invariance_sdxl(models, prompt_file, tmp_path):
    check_six_prompts("sdxl", models, prompt_file, tmp_path)
