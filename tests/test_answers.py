"""Kernels, not echoes: prompt formats (named, versioned, recorded in checkpoints), stopping where the kernel ends in
every decode path, and extracting what a user gets from an answer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from kernel_writers import kernel_writing_checkpoint
from kernelcheck.extract import KERNEL, NO_KERNEL, SERIAL_NOTE, TRUNCATED, extract_kernel
from kernelcheck.heads import kernel_head
from mot_engine import GenerationRequest, Generator, build_mot, read_checkpoint_metadata, save_checkpoint
from mot_engine.decoding.stopping import KernelEnd
from mot_engine.model.prompt_exemplars import EXEMPLARS
from mot_engine.model.prompts import FORMATS, SEED_TEMPLATE, get_format
from mot_engine.presets.tiny import TINY_EXPERTS, ensure_tiny

SAXPY = "void saxpy(int n, float a, const float* x, float* y) {\n    for (int i = 0; i < n; ++i) y[i] += a * x[i];\n}"
SAXPY_HEAD = "__global__ void saxpy_kernel(int n, float a, const float* x, float* y)"
COUNT = "int count(const int* v, int n) {\n    int c = 0;\n    for (int j = 0; j < n; ++j) c += v[j] > 0;\n    return c;\n}"
REFERENCE = ("__global__ void saxpy(int n, float a, const float *x, float *y) {\n"
             "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i < n) y[i] += a * x[i];\n}")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_tiny() / next(iter(TINY_EXPERTS)))


# ---------------------------------------------------------------------------------------------- heads and formats


def test_heads_map_parameters_one_to_one_or_stay_open():
    assert kernel_head(SAXPY).text == SAXPY_HEAD and kernel_head(SAXPY).complete
    assert kernel_head("void scale_cpu(double v[], int n) {}").text == "__global__ void scale_kernel(double *v, int n)"
    assert kernel_head(COUNT).text == "__global__ void count_kernel(" and not kernel_head(COUNT).complete  # returns
    assert kernel_head("void f(std::vector<float>& v) {}").text == "__global__ void f_kernel("
    assert kernel_head("void g(int &out) {}").text == "__global__ void g_kernel("
    assert kernel_head("void h(std::size_t n, float *p) {}").complete
    assert kernel_head("for (int i = 0; i < n; ++i) x[i] = 0;").text == "__global__ void translated_kernel("


def test_each_format_renders_what_it_names(tokenizer):
    seed = get_format("seed-v1").render(SAXPY, tokenizer)
    assert seed.text == SEED_TEMPLATE.replace("{source}", SAXPY) and seed.answer_prefix == ""
    head = get_format("kernel-head-v1").render(SAXPY, tokenizer)
    assert head.text == f"### C++:\n{SAXPY}\n### CUDA:\n{SAXPY_HEAD}" and head.answer_prefix == SAXPY_HEAD
    shots = get_format("fewshot-head-v1").render(SAXPY, tokenizer)  # no chat template: ### blocks
    assert shots.text.endswith(f"### C++:\n{SAXPY}\n### CUDA:\n{SAXPY_HEAD}") and shots.add_special_tokens
    assert all(c in shots.text and k in shots.text for c, k in EXEMPLARS)
    index = get_format("fewshot-index-v1").render(SAXPY, tokenizer)
    assert index.answer_prefix == SAXPY_HEAD + " {\n    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
    assert get_format("fewshot-index-v1").answer_prefix(COUNT) == "__global__ void count_kernel("  # open head
    with pytest.raises(ValueError, match="unknown prompt format 'nope'; choose one of seed-v1, kernel-head-v1"):
        get_format("nope")
    assert set(FORMATS) == {"seed-v1", "kernel-head-v1", "fewshot-head-v1", "fewshot-index-v1"}


def test_fewshot_uses_an_experts_chat_template(tokenizer):
    chat = AutoTokenizer.from_pretrained(ensure_tiny() / next(iter(TINY_EXPERTS)))
    chat.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = get_format("fewshot-head-v1").render(SAXPY, chat)
    assert not prompt.add_special_tokens and prompt.text.startswith("<system>")
    assert prompt.text.count("<user>") == len(EXEMPLARS) + 1 and prompt.text.count("<assistant>") == len(EXEMPLARS) + 1
    assert f"<assistant>{EXEMPLARS[0][1]}</assistant>" in prompt.text
    assert prompt.text.endswith(f"Translate to CUDA:\n{SAXPY}</user><assistant>{SAXPY_HEAD}")


def test_training_targets_continue_the_answer_prefix():
    assert get_format("seed-v1").target_for(SAXPY, REFERENCE) == REFERENCE
    assert get_format("kernel-head-v1").target_for(SAXPY, REFERENCE) == REFERENCE[REFERENCE.index(")") + 1:]
    assert get_format("kernel-head-v1").target_for(COUNT, REFERENCE) == REFERENCE[REFERENCE.index("(") + 1:]
    assert get_format("fewshot-index-v1").target_for(SAXPY, REFERENCE) == "    if (i < n) y[i] += a * x[i];\n}"


def test_a_checkpoint_restores_its_format_and_an_old_one_the_seed_template(tmp_path):
    mot = build_mot("tiny", device="cpu", prompt_format="kernel-head-v1")
    save_checkpoint(mot, tmp_path / "ck", preset="tiny")
    assert read_checkpoint_metadata(tmp_path / "ck")["mot_config"]["prompt_format"] == "kernel-head-v1"
    assert build_mot(checkpoint=tmp_path / "ck", device="cpu").prompt_format.name == "kernel-head-v1"
    meta_path = tmp_path / "ck" / "mot_checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["mot_config"]["prompt_format"]  # a checkpoint from before named formats
    meta_path.write_text(json.dumps(meta))
    assert build_mot(checkpoint=tmp_path / "ck", device="cpu").prompt_format.name == "seed-v1"


# ---------------------------------------------------------------------------------------------- stopping


def _fed(stop: KernelEnd, pieces) -> list[bool]:
    return [stop.feed(p) for p in pieces]


def test_the_answer_ends_where_its_kernel_ends_strings_and_comments_skipped():
    assert _fed(KernelEnd(SAXPY_HEAD, ("###",)), [" {", ' s = "}";', " // }", "\n  /* } */ if (n) { x = '}'; }",
                                                  "\n}", "\n### C++"]) == [False] * 4 + [True, True]
    helper = KernelEnd("", ("###",))  # a __device__ helper first: the answer goes on to its kernel
    assert _fed(helper, ["__device__ int sq(int v) { return v * v; }\n", "__global__ void k(int *x) {", " }"]) \
        == [False, False, True] and helper.reason == "kernel_end"
    echo = KernelEnd("", ("###",))  # a host function (the source echoed): nothing more is coming
    assert _fed(echo, ["void saxpy(int n) {", "}"]) == [False, True]
    marker = KernelEnd("### not counted: the prefix is the prompt's", ("###",))
    assert _fed(marker, ["\n#", "#", "#"]) == [False, False, True] and marker.reason == "marker"


@pytest.fixture(scope="module")
def writers(tmp_path_factory):
    return build_mot(checkpoint=kernel_writing_checkpoint(tmp_path_factory.mktemp("writers")), device="cpu")


def _requests(mode: str) -> list[tuple[GenerationRequest, str, str, str]]:
    """(request, its answer, finish reason, what comes out): rows that end at different steps."""
    return [
        (GenerationRequest(SAXPY, mode=mode, max_new_tokens=16), " {\n}", "stop", KERNEL),  # 3 tokens
        (GenerationRequest(COUNT, mode=mode, max_new_tokens=16), "xy) {\n}", "stop", KERNEL),  # 6 tokens
        (GenerationRequest(COUNT, mode=mode, max_new_tokens=4), "xy) {", "length", TRUNCATED),  # cut by the limit
        (GenerationRequest(SAXPY, mode=mode, max_new_tokens=16, prompt_format="seed-v1"), "}", "eos", NO_KERNEL),
        (GenerationRequest(SAXPY, mode=mode, max_new_tokens=5, stop_at_eos=False), " {\n}", "length", KERNEL),
    ]


@pytest.mark.parametrize("mode", ["fast", "full"])
@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic-cohorts", "slab"])
def test_stopping_gives_exactly_the_tokens_up_to_the_kernels_end_in_every_path(writers, mode, static_cache):
    cases = _requests(mode)
    gen = Generator(writers, static_cache=static_cache, cuda_graphs=False)
    alone = [gen.generate([request])[0] for request, *_ in cases]
    together = gen.generate([request for request, *_ in cases])  # one batch whose rows end at different steps
    tokenizer = writers.tokenizers[alone[0].routing["primary_expert"]]
    for (request, answer, reason, status), one, batched in zip(cases, alone, together):
        assert one.token_ids == batched.token_ids and one.finish_reason == batched.finish_reason == reason
        if request.stop_at_eos:  # the tokens end with the one that closes the kernel (or EOS, or the limit)
            expected = tokenizer(answer, add_special_tokens=False)["input_ids"]
            assert one.token_ids[: len(expected)] == expected
            assert len(one.token_ids) == len(expected) + (reason == "eos")
        else:  # exactly max_new_tokens, no stop of any kind: the kernel's close and EOS do not end it
            assert len(one.token_ids) == request.max_new_tokens
        assert extract_kernel(one.answer).status == status
    assert gen.results == {} and not gen.has_unfinished()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="the CUDA-graph path needs a GPU")
def test_stopping_on_the_graph_path_on_gpu(tmp_path):
    mot = build_mot(checkpoint=kernel_writing_checkpoint(tmp_path), device="cuda", dtype="float32")
    for mode in ("fast", "full"):
        cases = _requests(mode)
        graphs = Generator(mot)
        assert graphs.cuda_graphs
        eager = Generator(mot, static_cache=False, cuda_graphs=False)
        want = [r.token_ids for r in eager.generate([c[0] for c in cases])]
        assert [r.token_ids for r in graphs.generate([c[0] for c in cases])] == want
        assert [graphs.generate([c[0]])[0].token_ids for c in cases] == want


# ---------------------------------------------------------------------------------------------- extraction


def test_extraction_keeps_the_kernel_and_nothing_else():
    marked = f"{SAXPY_HEAD} {{\n  int i = threadIdx.x;\n  if (i < n) y[i] += a * x[i];\n}}\n\n### C++:\n{SAXPY}\n"
    got = extract_kernel(marked)
    assert got.status == KERNEL and got.kernel_name == "saxpy_kernel"
    assert got.code == f"{SAXPY_HEAD} {{\n  int i = threadIdx.x;\n  if (i < n) y[i] += a * x[i];\n}}\n"
    fenced = ("Here you go:\n```cuda\n#include <cuda_runtime.h>\n__device__ float twice(float v) { return 2 * v; }\n"
              "__global__ void k(float *x) { x[threadIdx.x] = twice(x[threadIdx.x]); }\n"
              "void launch(float *x) { k<<<1, 32>>>(x); }\nint unrelated() { return 0; }\n```\nThat is all.")
    got = extract_kernel(fenced)
    assert got.status == KERNEL and got.notes == ("with the host launcher the model wrote",)
    assert got.code.split("\n\n") == ["#include <cuda_runtime.h>", "__device__ float twice(float v) { return 2 * v; }",
                                      "__global__ void k(float *x) { x[threadIdx.x] = twice(x[threadIdx.x]); }",
                                      "void launch(float *x) { k<<<1, 32>>>(x); }\n"]


def test_a_serial_kernel_is_delivered_with_a_note_saying_so():
    serial = extract_kernel(f"{SAXPY_HEAD} {{\n  for (int i = 0; i < n; ++i) y[i] += a * x[i];\n}}\n")
    assert serial.status == KERNEL and serial.notes == (SERIAL_NOTE,)
    parallel = extract_kernel(f"{SAXPY_HEAD} {{\n  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                              "  if (i < n) y[i] += a * x[i];\n}}\n")
    assert parallel.status == KERNEL and parallel.notes == ()


def test_what_is_not_a_kernel_is_never_passed_off_as_one():
    echoed = extract_kernel(f" {SAXPY}\n### C++:\n{SAXPY}")
    assert echoed.status == NO_KERNEL and echoed.code == "" and "host code" in echoed.notes[0]
    cut = extract_kernel(f"{SAXPY_HEAD} {{\n  int i = threadIdx.x;\n  if (i < n) {{")
    assert cut.status == TRUNCATED and cut.code == "" and cut.kernel_name == "saxpy_kernel"
    assert extract_kernel("I cannot translate this.").status == NO_KERNEL
    assert extract_kernel('__global__ void k() { const char *s = "}"; ').status == TRUNCATED  # the brace is a string
