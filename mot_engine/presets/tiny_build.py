"""Building the tiny preset's folder (mot_engine/presets/tiny.py decides when): tokenizers trained on a small corpus of
C/C++/CUDA lines, random-weight experts of three real architectures, and a tiny random sentence encoder."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers import models as st_models
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
)



def corpus_lines() -> list[str]:
    text = resources.files("mot_engine").joinpath("data/tiny_corpus.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def _train_tokenizer(name: str, spec: dict, corpus: list[str]):
    specials = [t for t in (spec["bos"], spec["eos"]) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab"], special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = {"eos_token": spec["eos"], "pad_token": spec["eos"]}
    if spec["bos"]:
        kwargs["bos_token"] = spec["bos"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_expert(name: str, spec: dict, folder: Path, corpus: list[str], seed: int, layers: int) -> None:
    tokenizer = _train_tokenizer(name, spec, corpus)
    cfg_kwargs = {
        k: spec[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")
    }
    config = AutoConfig.for_model(
        spec["model_type"], vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        **cfg_kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init at std 0.02 gives nearly flat logits; a larger std makes greedy choices well separated, so
    # parity tests compare decisions that are not coin flips.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_encoder(folder: Path, corpus: list[str], seed: int) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(
        vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512,
    ))
    raw = folder / "_hf"
    bert.save_pretrained(raw)
    hf_tok.save_pretrained(raw)
    transformer = st_models.Transformer(str(raw), max_seq_length=512)
    dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = st_models.Pooling(dim_of(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder / "st"))
    shutil.rmtree(raw)
