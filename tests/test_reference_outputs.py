"""No change in results: every saved folder hashes as it did before the engine became one block lifecycle."""
from __future__ import annotations

import json

import pytest

from tests.reference_outputs import REFERENCE_FILE, cases, environment, run_case

REFERENCE = json.loads(REFERENCE_FILE.read_text())
# Float results are only comparable bit for bit on the library versions that wrote the hashes; on
# others the test says so in the summary (pytest -rs) rather than failing for a reason unrelated to us.
SAME_VERSIONS = REFERENCE["environment"] == environment()


@pytest.mark.skipif(not SAME_VERSIONS, reason=f"reference hashes were written with {REFERENCE['environment']}")
@pytest.mark.parametrize("name", sorted(cases()))
def test_saved_weights_are_byte_identical_to_the_reference(name, tmp_path):
    assert run_case(cases()[name], tmp_path) == REFERENCE["hashes"][name]


def test_every_case_has_a_reference_hash():
    assert sorted(REFERENCE["hashes"]) == sorted(cases())
