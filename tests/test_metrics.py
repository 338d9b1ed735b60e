"""train.metrics: agreement with sacrebleu / rouge-score / rapidfuzz, syntax validity, compile rate."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rapidfuzz.distance import Levenshtein
from rouge_score import rouge_scorer

from kernelcheck import toolchain
from kernelcheck.toolchain import find_nvcc
from train import metrics
from train.metrics import (
    BEST_MODEL_METRICS,
    METRIC_HIGHER_IS_BETTER,
    bleu,
    chrf,
    compile_rate,
    compute_metrics,
    edit_similarity,
    exact_match,
    rouge_l,
    sample_metrics,
    syntax_validity,
)

VALID_KERNEL = "__global__ void k(float* a){int i=threadIdx.x; a[i]=0;}"
BROKEN_KERNEL = "__global__ void k(float* a){int i=threadIdx.x a[i]=0;"

PREDS = [
    "__global__ void add(float *x, int n) { int i = threadIdx.x; if (i < n) x[i] += 1.0f; }",
    "__global__ void scale(float *y) { y[blockIdx.x] *= 2; }",
    "void host_only(int n) { for (int i = 0; i < n; i++) {} }",
]
REFS = [
    "__global__ void add(float *x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }",
    "__global__ void scale(float *y) {  y[blockIdx.x]   *= 2; }",
    "__global__ void k(int n) { }",
]


def test_bleu_and_chrf_match_sacrebleu():
    assert bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert chrf(PREDS, REFS) == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    assert 0 < bleu(PREDS, REFS) < 100
    assert bleu(REFS, REFS) == pytest.approx(100.0)


def test_rouge_l_is_mean_f1_of_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS)) / len(PREDS)
    assert rouge_l(PREDS, REFS) == pytest.approx(expected)
    assert 0 < rouge_l(PREDS, REFS) < 1


def test_exact_match_normalises_whitespace_only():
    assert exact_match(PREDS, REFS) == pytest.approx(1 / 3)  # only the second differs by whitespace alone
    assert exact_match(["a  +\n b"], ["a + b"]) == 1.0
    assert exact_match(["a+b"], ["a + b"]) == 0.0


def test_edit_similarity_matches_rapidfuzz():
    expected = sum(1 - Levenshtein.normalized_distance(p, r) for p, r in zip(PREDS, REFS)) / len(PREDS)
    assert edit_similarity(PREDS, REFS) == pytest.approx(expected)
    assert edit_similarity(["abc"], ["abc"]) == 1.0


def test_syntax_validity_tells_valid_from_broken():
    assert syntax_validity([VALID_KERNEL]) == 1.0
    assert syntax_validity([BROKEN_KERNEL]) == 0.0
    assert syntax_validity([VALID_KERNEL, BROKEN_KERNEL, "", VALID_KERNEL]) == 0.5


def test_compile_rate_is_unavailable_without_nvcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(toolchain, "NVCC_FALLBACK_DIRS", ())
    result = compile_rate([VALID_KERNEL])
    assert result["status"] == "unavailable"
    assert result["value"] is None  # not 0 % and not 100 %
    assert "nvcc not found" in result["message"]
    assert compute_metrics([VALID_KERNEL], [VALID_KERNEL], compile_check=True)["compile_rate"]["status"] == "unavailable"


def test_compile_rate_unavailable_when_find_nvcc_says_so(monkeypatch):
    monkeypatch.setattr(toolchain, "find_nvcc", lambda: None)
    assert compile_rate([VALID_KERNEL, BROKEN_KERNEL])["status"] == "unavailable"


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
def test_compile_rate_with_real_nvcc():
    result = compile_rate([VALID_KERNEL, BROKEN_KERNEL])
    assert result["status"] == "ok"
    assert (result["value"], result["compiled"], result["total"]) == (0.5, 1, 2)


def test_compute_metrics_names_and_ranges():
    result = compute_metrics(PREDS, REFS)
    assert set(result) == {"bleu", "chrf", "rouge_l", "exact_match", "edit_similarity", "syntax_validity"}
    assert result["bleu"] == pytest.approx(bleu(PREDS, REFS))
    assert result["syntax_validity"] == 1.0
    assert all(isinstance(value, float) and math.isfinite(value) for value in result.values())
    assert set(BEST_MODEL_METRICS) == {"bleu", "chrf", "rouge_l", "exact_match", "edit_similarity"}
    assert set(METRIC_HIGHER_IS_BETTER) == set(result) | {"compile_rate"}


def test_sample_metrics_match_sentence_level_libraries():
    pred, ref = PREDS[0], REFS[0]
    result = sample_metrics(pred, ref)
    assert result["bleu"] == pytest.approx(sacrebleu.sentence_bleu(pred, [ref]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.sentence_chrf(pred, [ref]).score)
    assert result["edit_similarity"] == pytest.approx(1 - Levenshtein.normalized_distance(pred, ref))
    assert (result["exact_match"], result["syntax_validity"]) == (0.0, 1.0)
    assert sample_metrics(BROKEN_KERNEL, BROKEN_KERNEL)["syntax_validity"] == 0.0


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="3 predictions, 2 references"):
        bleu(PREDS, REFS[:2])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [])
    with pytest.raises(ValueError, match="single string"):
        metrics.exact_match("abc", "abc")
    with pytest.raises(ValueError, match=r"preds\[1\]"):
        syntax_validity([VALID_KERNEL, None])
