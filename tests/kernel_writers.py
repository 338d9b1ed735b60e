"""Tiny experts that write a kernel: the tiny preset's three architectures and tokenizers, with weights set (not
random) so that every answer opened with a kernel's head continues ` {` `\\n` `}` and ends — an empty kernel (an
open head, `...(`, first gets the parameters `xy)`).

The product's surfaces (the daemon's result, the batch CLI's `.cu`, the language server's edit, Neovim) only pass
a kernel on when one came out, and random tiny experts never write one. These experts do, deterministically, through
the real loading, routing, decoding, stopping and extraction code: every decoder layer is zeroed (each adds nothing
to the residual stream, so a token's state is its embedding) and the embeddings and an untied LM head form a bigram
model (`SUCCESSORS`): `)` -> ` {` -> `\\n` -> `}` -> EOS, `(` -> `x` -> `y` -> `)`, any other token -> ` {`.
A checkpoint made with them records the `kernel-head-v1` prompt format, so a daemon loading it opens every answer
with the kernel's head: the result is a `__global__` function with an empty body (a kernel that is wrong, which the
checks after extraction say). With the seed's template there is no head, and the same experts give `no_kernel`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mot_engine import ExpertConfig, build_mot, save_checkpoint
from mot_engine.model.experts import find_decoder_layers
from mot_engine.presets.tiny import TINY_ENCODER, TINY_EXPERTS, ensure_tiny

# token -> the token that follows it (None: EOS); every token not named here is followed by DEFAULT_SUCCESSOR
SUCCESSORS = {")": " {", " {": "\n", "\n": "}", "}": None, "(": "x", "x": "y", "y": ")"}
DEFAULT_SUCCESSOR = " {"
LOGIT = 60.0


def _set_bigram(model, tokenizer) -> None:
    def token(piece: str | None) -> int:
        if piece is None:
            return tokenizer.eos_token_id
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(piece))
        assert len(ids) == 1, f"the tiny tokenizer must read {piece!r} as one token, got {ids}"
        return ids[0]

    embedding = model.get_input_embeddings().weight  # (V, d)
    basis = torch.eye(embedding.shape[1])
    head = torch.zeros_like(embedding)
    with torch.no_grad():
        for layer in find_decoder_layers(model):  # each layer adds zero: a token's state is its embedding
            for p in layer.parameters():
                p.zero_()
        embedding.copy_(basis[0].expand_as(embedding))  # direction 0: every token SUCCESSORS does not name
        head[token(DEFAULT_SUCCESSOR)] += LOGIT * basis[0]
        for i, piece in enumerate(SUCCESSORS):  # direction i + 1: SUCCESSORS' i-th token
            embedding[token(piece)] = basis[i + 1]
            head[token(SUCCESSORS[piece])] += LOGIT * basis[i + 1]
        norm = model.model.norm
        norm.weight.fill_(1.0)
        if getattr(norm, "bias", None) is not None:
            norm.bias.zero_()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)


def kernel_writing_experts(root: Path) -> list[ExpertConfig]:
    """The three tiny experts, made kernel writers, saved under `root` (named as the tiny preset names them)."""
    tiny = ensure_tiny()
    experts = []
    for name in TINY_EXPERTS:
        folder = Path(root) / name
        if not (folder / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(tiny / name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(tiny / name)
            _set_bigram(model, tokenizer)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        experts.append(ExpertConfig(name=name, path=str(folder)))
    return experts


def kernel_writing_checkpoint(root: Path, prompt_format: str = "kernel-head-v1") -> Path:
    """A checkpoint (router and interaction layers as built, gates zero) of a MoT over the kernel-writing experts,
    recording `prompt_format`; `mot-daemon serve --checkpoint` loads the experts it names."""
    root = Path(root)
    checkpoint = root / f"checkpoint-{prompt_format}"
    if not checkpoint.is_dir():
        torch.manual_seed(0)
        experts = kernel_writing_experts(root / "experts")
        mot = build_mot(experts=experts, encoder=str(ensure_tiny() / TINY_ENCODER / "st"), device="cpu",
                        prompt_format=prompt_format)
        staging = root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        save_checkpoint(mot, staging)
        staging.rename(checkpoint)
    return checkpoint
