"""Evaluation metrics for C/C++ -> CUDA translation, computed with the established libraries.

Scales (all higher is better, see METRIC_HIGHER_IS_BETTER):

* bleu, chrf: 0-100, sacrebleu's corpus BLEU-4 (13a tokenizer) and chrF, as papers report them.
* rouge_l: 0-1, mean per-sample F1 of rouge-score's ROUGE-L. Its default tokenizer lowercases and keeps
  only [a-z0-9] runs, so punctuation (`;`, `{`, `*`) does not count: a measure of identifier order.
* exact_match: 0-1, share of predictions equal to the reference once every whitespace run is
  collapsed to one space and both ends stripped (`a  +\\n b` == `a + b`, but `a+b` != `a + b`).
* edit_similarity: 0-1, mean of 1 - normalized character Levenshtein distance (rapidfuzz).
* syntax_validity: 0-1, share of predictions tree-sitter-cuda parses without ERROR/MISSING nodes
  (blank predictions are invalid).
* compile_rate: 0-1, share of predictions `nvcc -c` accepts; a dict with status "unavailable" (no
  value) where nvcc is missing, so a machine without CUDA never reports 0 % or 100 %.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import sacrebleu
from rapidfuzz.distance import Levenshtein
from rouge_score import rouge_scorer

from kernelcheck import parsing, toolchain
from kernelcheck.compile_check import nvcc_compile_check

from .defaults import BEST_MODEL_METRICS  # noqa: F401 - the metrics --best_model_metric may name (this module's API)

METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "bleu": True,
    "chrf": True,
    "rouge_l": True,
    "exact_match": True,
    "edit_similarity": True,
    "syntax_validity": True,
    "compile_rate": True,
}
METRIC_SCALE: dict[str, float] = {
    "bleu": 100.0,
    "chrf": 100.0,
    "rouge_l": 1.0,
    "exact_match": 1.0,
    "edit_similarity": 1.0,
    "syntax_validity": 1.0,
    "compile_rate": 1.0,
}


def _check_texts(name: str, texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, not a single string: {texts!r:.80}")
    if not texts:
        raise ValueError(f"no {name} to score: the sequence is empty")
    wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if wrong is not None:
        raise ValueError(f"{name}[{wrong}] is {type(texts[wrong]).__name__}, expected str")


def _check_pairs(preds: Sequence[str], refs: Sequence[str]) -> None:
    _check_texts("preds", preds)
    _check_texts("refs", refs)
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs differ in length: {len(preds)} predictions, {len(refs)} references")


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu defaults: 13a tokenizer, exponential smoothing off), 0-100."""
    _check_pairs(preds, refs)
    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)


def chrf(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100."""
    _check_pairs(preds, refs)
    return float(sacrebleu.corpus_chrf(list(preds), [list(refs)]).score)


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rouge_l_one(pred: str, ref: str) -> float:
    # RougeScorer.score(target, prediction): the reference comes first.
    return float(_rouge_l_scorer().score(ref, pred)["rougeL"].fmeasure)


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over samples, 0-1 (rouge-score's tokenizer: lowercase [a-z0-9] runs)."""
    _check_pairs(preds, refs)
    return sum(_rouge_l_one(p, r) for p, r in zip(preds, refs)) / len(preds)


def normalize_whitespace(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends (what exact_match compares)."""
    return " ".join(text.split())


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Share of predictions equal to their reference after `normalize_whitespace`, 0-1."""
    _check_pairs(preds, refs)
    return sum(normalize_whitespace(p) == normalize_whitespace(r) for p, r in zip(preds, refs)) / len(preds)


def _edit_similarity_one(pred: str, ref: str) -> float:
    return 1.0 - float(Levenshtein.normalized_distance(pred, ref))


def edit_similarity(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean of 1 - normalized Levenshtein distance over characters (rapidfuzz), 0-1."""
    _check_pairs(preds, refs)
    return sum(_edit_similarity_one(p, r) for p, r in zip(preds, refs)) / len(preds)


def syntax_validity(preds: Sequence[str]) -> float:
    """Share of predictions that parse as CUDA without ERROR/MISSING nodes (tree-sitter-cuda), 0-1."""
    _check_texts("preds", preds)
    return sum(parsing.is_valid_cuda(p) for p in preds) / len(preds)


def compile_rate(preds: Sequence[str], timeout_s: float = 60) -> dict[str, Any]:
    """Share of predictions `nvcc -c` compiles.

    Returns {"status": "ok", "value": share, "compiled": k, "total": n, "timeouts": t} or, without nvcc,
    {"status": "unavailable", "value": None, "message": why}: a missing toolkit is not a 0 % result.
    A prediction that times out counts as not compiled.
    """
    _check_texts("preds", preds)
    nvcc = toolchain.find_nvcc()
    if nvcc is None:
        return {"status": "unavailable", "value": None, "message": toolchain.nvcc_missing_message()}
    compiled = timeouts = 0
    for pred in preds:
        check = nvcc_compile_check(pred, timeout_s, nvcc=nvcc)
        if check.status == "unavailable":  # nvcc found but could not be run: no verdict on any sample
            return {"status": "unavailable", "value": None, "message": check.message}
        compiled += check.status == "ok"
        timeouts += check.status == "timeout"
    return {"status": "ok", "value": compiled / len(preds), "compiled": compiled, "total": len(preds), "timeouts": timeouts}


def compute_metrics(preds: Sequence[str], refs: Sequence[str], *, compile_check: bool = False) -> dict[str, Any]:
    """All corpus-level metrics: the five text metrics and syntax_validity as floats, plus
    "compile_rate" (the dict of `compile_rate`) when compile_check is True (slow: one nvcc run each)."""
    _check_pairs(preds, refs)
    metrics: dict[str, Any] = {
        "bleu": bleu(preds, refs),
        "chrf": chrf(preds, refs),
        "rouge_l": rouge_l(preds, refs),
        "exact_match": exact_match(preds, refs),
        "edit_similarity": edit_similarity(preds, refs),
        "syntax_validity": syntax_validity(preds),
    }
    if compile_check:
        metrics["compile_rate"] = compile_rate(preds)
    return metrics


def sample_metrics(pred: str, ref: str, *, compile_check: bool = False) -> dict[str, Any]:
    """The same metrics for one prediction (sentence-level BLEU/chrF from sacrebleu; exact_match and
    syntax_validity are 0.0 or 1.0), e.g. to list the worst translations of an evaluation."""
    if not isinstance(pred, str) or not isinstance(ref, str):
        raise ValueError(f"pred and ref must be str, got {type(pred).__name__} and {type(ref).__name__}")
    metrics: dict[str, Any] = {
        "bleu": float(sacrebleu.sentence_bleu(pred, [ref]).score),
        "chrf": float(sacrebleu.sentence_chrf(pred, [ref]).score),
        "rouge_l": _rouge_l_one(pred, ref),
        "exact_match": float(normalize_whitespace(pred) == normalize_whitespace(ref)),
        "edit_similarity": _edit_similarity_one(pred, ref),
        "syntax_validity": float(parsing.is_valid_cuda(pred)),
    }
    if compile_check:
        metrics["compile_rate"] = compile_rate([pred])
    return metrics
