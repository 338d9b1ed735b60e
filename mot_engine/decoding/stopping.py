"""Where an answer ends: at the close of its first kernel, at its prompt format's block marker, or at EOS.

Without it a model writes on after its kernel (another `### C++:` block, the source again) until the token limit.
The engine feeds each generated token's text to the request's `KernelEnd` when it hands the token out — in the
host work every decode path already does per step (a slab's tokens are read one step late, so a request that ends
here costs one ignored row-step, as one ending by EOS does): no extra device synchronisation.

The answer is scanned from its prefix (the kernel's head the prompt opened it with) by brace depth, strings and
comments skipped (`kernelcheck.sourcetext.CodeScanner`). When a top-level block closes, the text before its `{`
says what it was: a `__global__` function ends the answer; so does a host function (an echo of the source, or a
launcher no format asks for); `__device__` helpers and types before the kernel do not. The token that closes the
kernel is the last one generated; `kernelcheck.extract` cuts whatever follows the brace within that token.
"""

from __future__ import annotations

from kernelcheck.extract import block_kind
from kernelcheck.sourcetext import CodeScanner

ENDS_ANSWER = ("kernel", "function")


class KernelEnd:
    """One request's stop rule; `feed(text)` returns True once the answer has ended."""

    def __init__(self, answer_prefix: str = "", markers: tuple[str, ...] = ()):
        self.text = answer_prefix
        self.markers = tuple(m for m in markers if m)
        self._scanner = CodeScanner()
        self._item_start = 0  # where the current top-level item's header starts
        self._answer_start = len(answer_prefix)  # markers count only in what the model wrote
        self.reason: str | None = None
        self._scan(answer_prefix)

    def feed(self, text: str) -> bool:
        if self.reason is not None or not text:
            return self.reason is not None
        start = len(self.text)
        self.text += text
        if self._scan(text):
            return True
        longest = max((len(m) for m in self.markers), default=0)
        window = self.text[max(self._answer_start, start - longest + 1):]
        if any(marker in window for marker in self.markers):
            self.reason = "marker"
        return self.reason is not None

    def _scan(self, text: str) -> bool:
        for open_at, close_at in self._scanner.feed(text):
            if block_kind(self.text[self._item_start:open_at]) in ENDS_ANSWER:
                self.reason = "kernel_end"
                return True
            self._item_start = close_at + 1
        return False
