"""The model side of the daemon's engine thread: load the MixtureOfThoughts, make its Generator, turn a translate
request into a GenerationRequest, route a batch of sources, reload a checkpoint (keeping the old weights when that
fails), and describe the model for `status`.

The engine (daemon/engine.py, torch-free itself) imports this module on its own thread, so torch and mot_engine's
compute load there while the daemon already answers `status` ("loading").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from mot_engine import GenerationRequest, Generator, RuntimeConfig, build_mot, load_checkpoint
from mot_engine.decoding.candidates import Sampling

from . import protocol as P
from .engine_config import EngineConfig

log = logging.getLogger("daemon.engine")  # the engine's logger, as in engine_loop.py


def resolve_device(device: str | None) -> str:
    """The device to build on, with an explicit index for CUDA ("cuda" -> "cuda:0").

    Why the index: the engine compares its device with its parameters' devices to decide whether one CUDA graph
    can hold a decoding step, and torch.device("cuda") != torch.device("cuda:0"); an index-less device silently
    turned the graph path off.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


class ServedModel:
    """The MixtureOfThoughts a daemon serves, and the calls its engine thread makes on it (on that thread only)."""

    def __init__(self, mot, runtime: RuntimeConfig):
        self.mot = mot
        self.runtime = runtime

    @classmethod
    def load(cls, config: EngineConfig, *, model=None, load_model: Callable[[], Any] | None = None) -> ServedModel:
        """`model` when given (tests), else `load_model()`, else build_mot from the config."""
        if model is None and load_model is not None:
            model = load_model()
        if model is None:
            if config.init_seed is not None:
                torch.manual_seed(config.init_seed)
            model = build_mot(config.preset, config.checkpoint, device=resolve_device(config.device),
                              dtype=config.dtype, quantization=config.quantization, runtime=config.runtime)
        return cls(model, config.runtime)

    @property
    def expert_names(self) -> list[str]:
        return self.mot.expert_names

    @property
    def top_k(self) -> int:
        """How many experts the router activates: a translation's candidates try each as primary."""
        return self.mot.config.top_k

    def new_generator(self, max_batch_size: int) -> Generator:
        return Generator(self.mot, max_batch_size=max_batch_size, runtime=self.runtime)

    def prepare(self, gen: Generator) -> None:
        """Warm up (GPU: graph capture and compilation now, not on the first user's request) and log how the model
        decodes and routes."""
        mot = self.mot
        log.info("decoding: %s", gen.decoding)
        warm = gen.warm_up()
        if warm:
            log.info("captured the routing graphs%s in %.1f s (once per process)",
                     " and compiled the decode paths" if gen.compile_layers else "", warm)
        broken = getattr(mot.encoder.captured, "broken", None)
        log.info("routing: %s", f"eager (the encoder's CUDA graph capture failed: {broken})" if broken
                 else "CUDA graphs" if mot.encoder.captured is not None else "eager")

    def describe(self, preset: str | None) -> dict[str, Any]:
        """What `status` shows of the served model (`preset`: the configured one, when the model names none)."""
        mot = self.mot
        return {
            "preset": getattr(mot, "preset", preset), "checkpoint": getattr(mot, "checkpoint", None),
            "device": str(mot.device), "dtype": str(next(mot.experts[0].parameters()).dtype).replace("torch.", ""),
            "expert_names": list(mot.expert_names),
            "expert_ids": [e.model_id for e in mot.config.experts] or list(mot.expert_names),
            "encoder": mot.config.encoder, "max_source_tokens": mot.config.max_source_tokens,
        }

    @staticmethod
    def inference_only() -> None:
        """Gradients off on the calling thread (the engine thread only runs inference)."""
        torch.set_grad_enabled(False)

    @staticmethod
    def generation_request(request: P.Translate, sampling: Sampling) -> GenerationRequest:
        """One candidate of a translation: the request's options, sampled as `sampling` says."""
        o = request.options
        return GenerationRequest(
            source=request.source, mode=sampling.mode or o.mode, max_new_tokens=o.max_new_tokens,
            temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed, stop_at_eos=not o.ignore_eos,
            primary_rank=sampling.primary_rank, rank_by=sampling.rank_by,
        )

    def route(self, requests: list[P.Route]) -> list[dict | Exception]:
        """The routing of each request's source, batched; when the batch fails, one by one (a source that breaks
        the encoder gets its exception, to be answered as an error; the others their routing)."""
        mot = self.mot
        try:
            with torch.no_grad():
                routing = mot.route([r.source for r in requests], noise=False)
            return [routing.info(b, mot.expert_names) for b in range(len(requests))]
        except Exception:
            log.exception("batched routing of %d sources failed; retrying one by one", len(requests))
        infos: list[dict | Exception] = []
        for r in requests:
            try:
                infos.append(mot.get_routing_info(r.source))
            except Exception as e:  # this source alone breaks the encoder: its sender is told
                log.exception("routing of request %s failed", r.id)
                infos.append(e)
        return infos

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint the served weights came from (None: fresh router and interaction layers)."""
        return getattr(self.mot, "checkpoint", None)

    def reload(self, path: str) -> None:
        """Load a router/interaction checkpoint; on any failure the previous weights are put back and the exception
        propagates."""
        mot = self.mot
        before = {k: v.detach().clone() for k, v in mot.trainable_state_dict().items()}
        try:
            load_checkpoint(mot, path)
        except BaseException:
            _restore_trainable(mot, before)
            raise
        mot.checkpoint = str(path)


def _restore_trainable(mot, state: dict) -> None:
    """Put back trainable weights saved before a reload that failed half way."""
    params = dict(mot.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target = params[name] if name in params else mot.router.selection_ema
            target.copy_(value)
