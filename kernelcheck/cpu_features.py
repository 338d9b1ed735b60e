"""What the CPU backend cannot run: CUDA features named by the tokens (or headers) that use them.

`first_unsupported` scans the tokens of `kernelcheck.cpu_source`'s lexer (comments and string literals are not
tokens, so a feature mentioned there does not count) and returns the first use of a feature of
`UNSUPPORTED_FEATURES` as `Unsupported` — "not verifiable on CPU: <feature> (<token>, line N)".  A kernel
launch on a stream or inside device code is found by `kernelcheck.cpu_source` while it rewrites launches.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, Sequence

__all__ = ["Unsupported", "UNSUPPORTED_FEATURES", "STREAMS", "DYNAMIC_PARALLELISM", "first_unsupported"]


class Token(Protocol):
    """What this module reads of a token (`kernelcheck.cpu_source`'s lexer makes them)."""

    kind: str
    text: str
    start: int
    line: int
    directive: bool


@dataclass(frozen=True)
class Unsupported:
    """A feature the CPU backend cannot run: its family, the token that uses it, its 1-based line."""

    feature: str
    name: str
    line: int

    @property
    def reason(self) -> str:
        return f"not verifiable on CPU: {self.feature} ({self.name}, line {self.line})"

    def __str__(self) -> str:
        return self.reason


_WARP = "warp-level primitive (threads run one at a time on the CPU: there are no warps)"
_COOP = "cooperative groups"
_TEXTURE = "textures/surfaces"
STREAMS = "streams/events"
DYNAMIC_PARALLELISM = "dynamic parallelism (a kernel launching a kernel)"
_ASM = "inline PTX assembly"
_HALF = "half-precision types"
_TENSOR = "tensor-core matrix operations"
_LIBRARY = "a CUDA library (Thrust, CUB, libcu++, cuBLAS, cuRAND...)"
_DRIVER = "the CUDA driver API"
_LAUNCH_API = "launch APIs other than <<<>>> (cudaLaunchKernel, graphs)"
_ASYNC_COPY = "asynchronous copies to shared memory"
_MULTI_GPU = "several GPUs (peer access)"

UNSUPPORTED_FEATURES = (_WARP, _COOP, _TEXTURE, STREAMS, DYNAMIC_PARALLELISM, _ASM, _HALF, _TENSOR, _LIBRARY, _DRIVER,
                        _LAUNCH_API, _ASYNC_COPY, _MULTI_GPU)

_NAMES = {
    **dict.fromkeys(("__ballot", "__ballot_sync", "__any", "__all", "__any_sync", "__all_sync", "__uni_sync",
                     "__activemask", "__syncwarp", "__match_any_sync", "__match_all_sync", "__lanemask_lt"), _WARP),
    **dict.fromkeys(("cooperative_groups", "this_thread_block", "this_grid", "tiled_partition", "thread_block_tile",
                     "coalesced_threads", "grid_group", "this_cluster"), _COOP),
    **dict.fromkeys(("cudaTextureObject_t", "cudaSurfaceObject_t", "cudaCreateTextureObject", "cudaBindTexture",
                     "cudaBindTexture2D", "cudaBindTextureToArray", "cudaUnbindTexture", "cudaArray", "cudaArray_t",
                     "cudaMallocArray", "cudaMalloc3DArray", "cudaMemcpyToArray", "cudaMemcpy2DToArray",
                     "cudaCreateChannelDesc", "cudaCreateSurfaceObject", "cudaResourceDesc", "cudaTextureDesc"),
                    _TEXTURE),
    **dict.fromkeys(("cudaLaunchHostFunc", "cudaStreamAddCallback"), STREAMS),
    **dict.fromkeys(("cudaLaunchDevice", "cudaGetParameterBuffer"), DYNAMIC_PARALLELISM),
    **dict.fromkeys(("asm", "__asm__", "__asm"), _ASM),
    **dict.fromkeys(("__half", "__half2", "__nv_bfloat16", "__nv_bfloat162", "nv_bfloat16", "__float2half",
                     "__float2half_rn", "__half2float", "__floats2half2_rn", "__float2bfloat16", "__bfloat162float",
                     "__hadd2", "__hmul", "__hmul2", "__hfma", "__hfma2", "__hdiv", "__hsub", "__nv_fp8_e4m3"), _HALF),
    **dict.fromkeys(("wmma", "nvcuda", "mma_sync", "load_matrix_sync", "store_matrix_sync"), _TENSOR),
    **dict.fromkeys(("thrust", "cub"), _LIBRARY),
    **dict.fromkeys(("cudaLaunchKernel", "cudaLaunchKernelEx", "cudaLaunchCooperativeKernel"), _LAUNCH_API),
    **dict.fromkeys(("memcpy_async", "__pipeline_memcpy_async", "__pipeline_commit", "__pipeline_wait_prior",
                     "cp_async"), _ASYNC_COPY),
    **dict.fromkeys(("cudaMemcpyPeer", "cudaMemcpyPeerAsync", "cudaDeviceEnablePeerAccess",
                     "cudaDeviceCanAccessPeer"), _MULTI_GPU),
}
_PATTERNS = (
    (re.compile(r"__shfl\w*|__reduce_\w+_sync"), _WARP),
    (re.compile(r"(?:tex|surf)(?:1D|2D|3D|Cubemap)\w*"), _TEXTURE),
    (re.compile(r"cuda(?:Stream|Event)\w*"), STREAMS),
    (re.compile(r"cudaGraph\w*"), _LAUNCH_API),
    (re.compile(r"cu(?:blas|fft|rand|sparse|solver|dnn|tensor|Dnn|BLAS|FFT)\w*|curand_\w+"), _LIBRARY),
    (re.compile(r"cu(?:Init|(?:Device|Ctx|Module|Launch|Mem|Stream|Event|Func|Graph|Link|Tex|Surf)[A-Z_]\w*)"), _DRIVER),
)
# #include'd headers that bring an unsupported feature.
_HEADERS = (
    (re.compile(r"cuda_fp16\.h|cuda_bf16\.h|cuda_fp8\.h"), _HALF),
    (re.compile(r"cooperative_groups"), _COOP),
    (re.compile(r"mma\.h"), _TENSOR),
    (re.compile(r"(?:thrust|cub|cuda)/|cublas|cufft|curand|cusparse|cusolver|cudnn"), _LIBRARY),
    (re.compile(r"cuda_pipeline|cuda_awbarrier"), _ASYNC_COPY),
)
_INCLUDE_RE = re.compile(r"#\s*include\s*[<\"]([^>\"]+)[>\"]")


def _feature_of(tokens: Sequence[Token], i: int) -> str | None:
    """The unsupported feature token ``i`` uses, or None."""
    token = tokens[i]
    nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
    if token.text in _NAMES:
        if token.text in ("thrust", "cub") and nxt != "::":
            return None  # a variable that happens to be called so
        return _NAMES[token.text]
    if token.text in ("texture", "surface") and nxt == "<":
        return _TEXTURE
    if token.text == "cuda" and nxt == "::":
        return _LIBRARY
    for pattern, feature in _PATTERNS:
        if pattern.fullmatch(token.text):
            return feature
    return None


def first_unsupported(source: str, tokens: Sequence[Token]) -> Unsupported | None:
    """The first use of an unsupported feature in ``source`` (whose tokens are ``tokens``), or None."""
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.text == "#" and token.directive:
            m = _INCLUDE_RE.match(source, token.start)
            if m:
                for pattern, feature in _HEADERS:
                    if pattern.search(m.group(1)):
                        return Unsupported(feature, f"#include <{m.group(1)}>", token.line)
        if token.kind != "ident":
            continue
        feature = _feature_of(tokens, i)
        if feature is not None:
            return Unsupported(feature, token.text, token.line)
    return None
