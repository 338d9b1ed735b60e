"""kernelcheck: C/C++ and CUDA source work — parsing, toolchains, sandboxed builds and runs, and the functional
checking of kernels against their tests.  Torch-free, and independent of the model, daemon, language server and
training packages (a test holds both).

Modules:

* `kernelcheck.parsing` — tree-sitter function spans and CUDA syntax checks (the only tree-sitter user).
* `kernelcheck.toolchain` — one finder for nvcc and g++ (with versions), GPU detection, the -arch choice.
* `kernelcheck.sandbox` — the sandboxed subprocess runner (limits, scrubbed environment, process-group kill)
  and the compile helper, which every build and run of untrusted code goes through.
* `kernelcheck.compile_check` — ``nvcc -c`` of a snippet with diagnostics an editor can show.
* `kernelcheck.cases`, `kernelcheck.programs`, `kernelcheck.reports`, `kernelcheck.functional`,
  `kernelcheck.cli` — the functional (compile-and-run) harness for BabelTower executable cases and its
  ``functional`` command (``python -m kernelcheck functional``); `kernelcheck.generated` and
  `kernelcheck.side_by_side` strengthen it with generated-input checks against each case's C code (pass@k on the
  data's tests and on data + generated tests side by side, vacuous cases apart).
* `kernelcheck.cpu_backend` (with `kernelcheck.cpu_source`, `kernelcheck.cpu_features` and the C++ header
  ``emulation/cuda_cpu.h``) — the CPU backend: CUDA kernels built by g++ and run on the CPU with races and
  out-of-bounds accesses reported, for differential testing without a GPU.

* `kernelcheck.verify` — differential testing of a kernel against the user's C/C++ function (``mot-check``,
  `kernelcheck.check_cli`): `kernelcheck.signatures`, `kernelcheck.intervals`, `kernelcheck.cwalk` and
  `kernelcheck.loopnest` read the code; `kernelcheck.mapping`, `kernelcheck.launch`, `kernelcheck.launch_config`,
  `kernelcheck.inputs` and `kernelcheck.pairing` prepare a check; `kernelcheck.harness` (with
  `kernelcheck.harness_runtime`), `kernelcheck.builds`, `kernelcheck.runner` and `kernelcheck.reference_cache` run
  it; `kernelcheck.compare`, `kernelcheck.judge` and `kernelcheck.verdict` judge it; `kernelcheck.mutants`,
  `kernelcheck.mutant_suite` and `kernelcheck.vacuity` test the check itself and the data.

Importing the package imports none of them; the harness modules need only the standard library.
"""
