"""The differential check against BabelTower's exec_dev reference kernels and their mutants (CPU backend).

Generated inputs only (the data set's own tests are not used).  A deterministic sample of the 122 cases keeps
this within CI's budget; ``benchmarks/verify_exec_dev.py --mutants`` runs all of them (the numbers in the
report).  Requirements held here:

* no mutant of a verified reference kernel is verified unless its outputs equal the reference kernel's on every
  input both ran (no blind spot);
* at least 95 % of the empty-body and flipped-operator mutants of verified references are caught, equivalent
  mutants (outputs equal to the reference kernel's on every input) left out, and those are rare (under 10 %);
* most reference kernels are verified against their own C code, and none is verified on zero inputs.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kernelcheck import toolchain as kc_toolchain
from kernelcheck.mutant_suite import run_case, summarize

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babeltower" / "exec_dev.jsonl"
SAMPLE_EVERY = 6  # every 6th case: 21 of 122

pytestmark = [
    pytest.mark.skipif(not DATA.is_file(), reason=f"BabelTower executable data not found at {DATA}"),
    pytest.mark.skipif(kc_toolchain.find_gxx() is None, reason="no C++ compiler (g++)"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def suite():
    records = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][::SAMPLE_EVERY]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda r: run_case(str(r["id"]), r["cpp_code"], r["cuda_code"], backend="cpu"),
                             records))


def test_no_mutant_is_verified_when_it_differs_from_the_reference(suite):
    blind = [(r.case_id, m.kind, m.description) for r in suite if r.reference.status == "verified"
             for m in r.mutants if m.outcome == "verified_different"]
    assert not blind


def test_empty_bodies_and_flipped_operators_are_caught(suite):
    summary = summarize(suite)
    for kind in ("empty_body", "flip_operator"):
        row = summary["kinds"][kind]
        assert row["mutants"] >= 10, row
        assert row["verified_equivalent"] <= 0.1 * row["mutants"], (kind, row)
        assert row["score"] >= 0.95, (kind, row)


def test_reference_kernels_are_mostly_verified_and_never_on_nothing(suite):
    statuses = [r.reference.status for r in suite]
    assert statuses.count("verified") >= 0.8 * len(statuses), statuses
    for r in suite:
        v = r.reference
        assert v.status != "verified" or (v.inputs >= 1 and v.launched >= 1 and v.mismatch is None)
        assert v.status in ("verified", "mismatch", "not_verifiable"), (r.case_id, v.status, v.reason)
        assert v.reason
