"""Fixtures shared by the trainer tests: the arithmetic tokenizer and a tiny untrained GPT-2 on disk."""
import pytest

from rlformal_utils.arithmetic import task
from rlformal_utils.pretrain import build_gpt2


@pytest.fixture(scope="session")
def tok():
    return task.make_tokenizer()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("tiny")
    build_gpt2("tiny", tok, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d
