"""The two ways a substitution is switched for one forward: per MoT (`Substitution`: a flag on the MixtureOfThoughts
that the module's dispatching forward reads) and process-wide (`GlobalSwitch`: a dispatcher installed once per family
module or registry); and the install loop the per-module substitutions share."""

from __future__ import annotations

from mot_engine.kernels.gemv import available


def install_per_module(mot, name: str, kernel, triton_kernel, eligible, weight_of, probe, dispatch) -> int:
    """The install loop of a per-module substitution: every eligible module of the experts whose probe passes gets
    `dispatch(mot, module, kernel, needs_cuda)`. `kernel` None means the Triton one (GPU modules only; none without
    Triton); a given kernel (tests) also serves CPU modules. Sets mot._use_{name} (off) and mot._{name}_installed
    (the count, returned). Idempotent."""
    installed = f"_{name}_installed"
    if getattr(mot, installed, None) is not None:
        return getattr(mot, installed)
    setattr(mot, f"_use_{name}", False)
    needs_cuda = kernel is None
    count = 0
    if kernel is not None or available():
        kernel = kernel or triton_kernel
        for model in mot.experts:
            for module in model.modules():
                if eligible(module) and (weight_of(module).is_cuda or not needs_cuda) and probe(module, kernel):
                    dispatch(mot, module, kernel, needs_cuda)
                    count += 1
    setattr(mot, installed, count)
    return count


class Substitution:
    """Turns one installed substitution on (or off) for the duration of a block; restores the previous state."""

    flag = installed = ""

    def __init__(self, mot, on: bool = True):
        self.mot, self.on = mot, on

    def __enter__(self):
        self.prev = getattr(self.mot, self.flag, False)
        setattr(self.mot, self.flag, self.on and bool(getattr(self.mot, self.installed, 0)))

    def __exit__(self, *exc):
        setattr(self.mot, self.flag, self.prev)


class GlobalSwitch:
    """Turns a process-wide dispatcher (one per family module or registry) on or off for the duration of a block;
    restores the previous state. The engine drives the experts from one thread."""

    state: dict = {}

    def __init__(self, on: bool = True):
        self.on = on

    def __enter__(self):
        self.prev = self.state["on"]
        self.state["on"] = self.on

    def __exit__(self, *exc):
        self.state["on"] = self.prev
