"""Routing by CUDA-graph replay (mot_engine/router.py, CapturedEncoder): inputs padded up to a captured shape must
embed as they do unpadded — on CPU the padding itself, on a GPU the graphs against the eager encoder."""

from __future__ import annotations

import pytest
import torch

from mot_engine.model.router import CapturedEncoder, pad_features

SOURCES = ["int sq(int x) { return x * x; }",
           "void axpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] += a * x[i]; }",
           "x"]


def _embed(st, features):
    with torch.no_grad():
        return st(dict(features))["sentence_embedding"]


def test_padded_rows_and_columns_embed_like_the_unpadded_batch(tiny_mot):
    st = tiny_mot.encoder.model
    features = st.preprocess(SOURCES)  # (3, L), padded to the longest by the tokenizer
    B, L = features["input_ids"].shape
    padded = pad_features(features, 4, L + 37, st.tokenizer.pad_token_id)
    assert padded["input_ids"].shape == (4, L + 37) and padded["attention_mask"][:, L:].sum() == 0
    assert torch.equal(padded["input_ids"][3], padded["input_ids"][0])  # a spare row repeats row 0
    torch.testing.assert_close(_embed(st, padded)[:B], _embed(st, features), rtol=1e-5, atol=1e-6)
    for b, text in enumerate(SOURCES):  # each source alone, unpadded: the same embedding
        torch.testing.assert_close(_embed(st, padded)[b], _embed(st, st.preprocess([text]))[0], rtol=1e-5, atol=1e-6)


def test_shapes_are_powers_of_two_capped_at_the_encoder_length(tiny_mot):
    captured = CapturedEncoder(tiny_mot.encoder.model, max_length=384)
    assert captured.shape_for(1, 5) == (1, 32)
    assert captured.shape_for(3, 33) == (4, 64)
    assert captured.shape_for(1, 300) == (1, 384)
    assert captured.shape_for(2, 384) == (2, 384)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_replay_equals_the_eager_encoder_on_gpu():
    from mot_engine import build_mot

    mot = build_mot("tiny", device="cuda", dtype="float32")
    enc = mot.encoder.eval()
    assert enc.captured is not None
    assert enc.warm_up(SOURCES) >= 1 and enc.captured.broken is None
    with torch.no_grad():
        graphs = enc(SOURCES)
        enc.captured, kept = None, enc.captured
        eager = enc(SOURCES)
        enc.captured = kept
    torch.testing.assert_close(graphs, eager, rtol=1e-4, atol=1e-5)
    L = enc.model.preprocess(SOURCES)["input_ids"].shape[1]
    assert kept.shape_for(len(SOURCES), L) in kept.graphs  # the batch of 3 replayed a (4, L') graph


def test_warm_up_captures_batch_one_at_every_length_bucket(tiny_mot, monkeypatch):
    """Each bucket is captured from a valid input that fits it, however long the warm-up text is."""
    captured = CapturedEncoder(tiny_mot.encoder.model, max_length=384)
    seen = []

    def fake_capture(shape, features):
        assert features["input_ids"].shape[0] == 1 and features["input_ids"].shape[1] <= shape[1]
        assert features["attention_mask"].shape == features["input_ids"].shape
        seen.append(shape)
        captured.graphs[shape] = None

    monkeypatch.setattr(captured, "_capture", fake_capture)
    captured.warm_up([SOURCES[1] * 4])
    assert seen == [(1, 32), (1, 64), (1, 128), (1, 256), (1, 384)]
