"""Prompt formats: how a source becomes the text each expert reads, named and versioned.

A checkpoint records the format it was trained with (`MoTConfig.prompt_format`) and inference uses that format;
a checkpoint from before formats existed used the seed's template (`seed-v1`). A format gives, for one source and
one expert's tokenizer, a `Prompt`: the text to tokenize, and the *answer prefix* — the part of the answer the
prompt has already written and the model continues.

| name | what the expert reads | answer prefix |
|---|---|---|
| `seed-v1` | the seed's template: `### Translate C++ to CUDA:` source `### CUDA:` | none |
| `kernel-head-v1` | `### C++:` source `### CUDA:` | the kernel's head |
| `fewshot-head-v1` | three exemplar pairs (`prompt_exemplars.py`), as chat turns where the expert has a chat template (SmolLM2-Instruct), else as `### C++:` / `### CUDA:` blocks; then the source | the kernel's head |
| `fewshot-index-v1` | as `fewshot-head-v1` | the head, `{`, and the thread's index for the C loop's variable |

The head (`kernelcheck.heads`) is `__global__ void <name>_kernel(<the C parameters>)` where every parameter maps one
to one, else `__global__ void <name>_kernel(` — so the model writes a kernel's body rather than echoing the source.
Formats are versioned by name: changing what a format renders means a new name, since trained checkpoints depend on
the exact text. `target_for` turns a reference kernel into what continues a format's answer prefix (training).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

from kernelcheck.heads import KernelHead, kernel_head
from kernelcheck.sourcetext import match_close

from mot_engine.model.prompt_exemplars import EXEMPLARS

SEED_TEMPLATE = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n"
_SYSTEM = ("You translate C and C++ functions into CUDA kernels: one GPU thread per iteration of the function's "
           "loop, guarded by a bounds check. Answer with the kernel only.")
_LOOP_VARIABLE = re.compile(r"\bfor\s*\(\s*(?:(?:unsigned|signed|const)\s+)*(?:int|long|size_t|unsigned)?\s*"
                            r"(?:long\s+)?([A-Za-z_]\w*)\s*=")


@dataclass(frozen=True)
class Prompt:
    text: str  # what the expert reads; ends with `answer_prefix`
    answer_prefix: str  # the start of the answer, already written by the prompt
    add_special_tokens: bool = True  # False where a chat template has placed the special tokens itself


class PromptFormat(ABC):
    """One named way to prompt. `markers`: text that ends an answer when the model writes it (the next block's
    marker); the decoding engine stops there, and at the end of the answer's first kernel."""

    name = ""
    markers: tuple[str, ...] = ("###",)

    def answer_prefix(self, source: str) -> str:
        return ""

    @abstractmethod
    def render(self, source: str, tokenizer) -> Prompt:
        """The prompt of `source` for an expert with this tokenizer."""

    def target_for(self, source: str, reference: str) -> str:
        """The part of a reference answer that continues this format's answer prefix (what training targets)."""
        return reference


class TemplateFormat(PromptFormat):
    """A template with `{source}` (the seed's, `seed-v1`, or one a user or an old checkpoint gives)."""

    def __init__(self, template: str = SEED_TEMPLATE, name: str | None = None):
        if "{source}" not in template:
            raise ValueError(f"a prompt template must contain '{{source}}', got {template!r}")
        self.template = template
        self.name = name or ("seed-v1" if template == SEED_TEMPLATE else "template")

    def render(self, source: str, tokenizer) -> Prompt:
        return Prompt(self.template.replace("{source}", source), "")


class HeadFormat(PromptFormat):
    """`kernel-head-v1`: the source in a `### C++:` block, the answer opened with the kernel's head."""

    name = "kernel-head-v1"
    markers = ("###", "```")

    def answer_prefix(self, source: str) -> str:
        return kernel_head(source).text

    def render(self, source: str, tokenizer) -> Prompt:
        prefix = self.answer_prefix(source)
        return Prompt(f"### C++:\n{source.strip()}\n### CUDA:\n{prefix}", prefix)

    def target_for(self, source: str, reference: str) -> str:
        return continuation(reference, kernel_head(source), self.answer_prefix(source))


class FewShotFormat(HeadFormat):
    """`fewshot-head-v1` / `fewshot-index-v1`: exemplar pairs first (chat turns where the tokenizer has a chat
    template), then the source; the answer opened with the head (and, for `index`, the thread's index)."""

    def __init__(self, open_index: bool = False):
        self.open_index = open_index
        self.name = "fewshot-index-v1" if open_index else "fewshot-head-v1"

    def answer_prefix(self, source: str) -> str:
        head = kernel_head(source)
        loop = _LOOP_VARIABLE.search(source)
        if self.open_index and head.complete and loop is not None:
            return f"{head.text} {{\n    int {loop.group(1)} = blockIdx.x * blockDim.x + threadIdx.x;\n"
        return head.text

    def render(self, source: str, tokenizer) -> Prompt:
        prefix = self.answer_prefix(source)
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": _SYSTEM}]
            for c, cuda in EXEMPLARS:
                messages += [{"role": "user", "content": f"Translate to CUDA:\n{c}"},
                             {"role": "assistant", "content": cuda}]
            messages.append({"role": "user", "content": f"Translate to CUDA:\n{source.strip()}"})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return Prompt(text + prefix, prefix, add_special_tokens=False)
        shots = "".join(f"### C++:\n{c}\n### CUDA:\n{cuda}\n\n" for c, cuda in EXEMPLARS)
        return Prompt(f"{shots}### C++:\n{source.strip()}\n### CUDA:\n{prefix}", prefix)


def continuation(reference: str, head: KernelHead, prefix: str) -> str:
    """What follows `prefix` in a reference kernel: after its parameter list's `)` for a complete head (the head's
    name and parameters stand for the reference's), after its `(` for an open one, and after the body's first
    statement when the prefix also opened the body with the thread's index; the whole reference without a head."""
    if not prefix:
        return reference
    kernel = re.search(r"__global__[^(;{}]*\(", reference)
    if kernel is None:
        return reference
    open_paren = kernel.end() - 1
    if not head.complete:
        return reference[open_paren + 1:]
    close_paren = match_close(reference, open_paren, "(", ")")
    if close_paren < 0:
        return reference
    rest = reference[close_paren + 1:]
    if not prefix.endswith("\n"):
        return rest
    body = rest[rest.find("{") + 1:]  # the prefix opened the body and wrote the index: continue after it
    first = body.split(";", 1)
    return first[1].lstrip(" ").lstrip("\n") if len(first) == 2 and "threadIdx" in first[0] else body.lstrip("\n")


FORMATS: dict[str, PromptFormat] = {f.name: f for f in (TemplateFormat(), HeadFormat(), FewShotFormat(),
                                                         FewShotFormat(open_index=True))}


def get_format(name: str) -> PromptFormat:
    """The format of this name; ValueError names the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}") from None
