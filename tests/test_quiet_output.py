"""Executed notebooks stay short: the MiniLM embeddings of one call report as one bar (a few lines in
an executed copy), however many cached parts they are built in."""
from types import SimpleNamespace

import numpy as np
import torch

from rlformal_utils.sentiment import reward as R


def _fake_encoder():
    enc = R.MiniLMEncoder.__new__(R.MiniLMEncoder)
    enc.max_length = 8
    enc.batches = lambda texts, batch_size=128: [np.array([i]) for i in range(len(texts))]
    enc.tokenizer = lambda texts, **kw: {"input_ids": torch.ones(len(texts), 2, dtype=torch.long),
                                         "attention_mask": torch.ones(len(texts), 2, dtype=torch.long)}
    enc.model = lambda **e: SimpleNamespace(last_hidden_state=torch.ones(e["input_ids"].shape[0], 2, 384))
    return enc


def test_embeddings_built_in_parts_print_a_few_lines_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RLFORMAL_PROGRESS", "lines")
    texts = [f"review number {i}" for i in range(80)]
    out = R.shared_embeddings(_fake_encoder(), texts, {"test": 1}, cache_dir=tmp_path, parts=4)
    assert out.shape == (80, 384) and np.allclose(np.linalg.norm(out, axis=1), 1)
    lines = [l for l in capsys.readouterr().out.splitlines() if "MiniLM embeddings" in l]
    assert 1 <= len(lines) <= 4, lines
    again = R.shared_embeddings(_fake_encoder(), texts, {"test": 1}, cache_dir=tmp_path, parts=4)  # cached: silent
    assert np.array_equal(out, again) and "MiniLM" not in capsys.readouterr().out
