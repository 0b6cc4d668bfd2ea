"""The SYN golden corpus: every saved SYN in tests/fixtures/syn/ decodes to its fields.

Each JSON file holds one packet's hex and either the text of every SYN field
of docs/fields.md, worked out from the case's written definition in
tests/fixtures/syn_cases.py, or the error class and byte offset a malformed
packet must raise.  The files are the specification; a second test checks
they still match the definitions they were written from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tcpfp_cli import errors
from tcpfp_cli.fields import BY_NAME, Observation, render
from tcpfp_cli.syn import parse_syn

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import syn_cases  # noqa: E402

FILES = sorted((FIXTURES / "syn").glob("*.json"))
DOCS = [json.loads(path.read_text()) for path in FILES]

#: Only p0f's reading of deliberately malformed options may be left unstated.
MAY_BE_UNSTATED = {"FINGERPRINT_P0F"}


def _id(doc: dict) -> str:
    return doc["name"]


def test_corpus_is_there() -> None:
    assert len(DOCS) >= 90
    assert sum("error" in d for d in DOCS) >= 25


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_fixture(doc: dict) -> None:
    raw = bytes.fromhex(doc["hex"])
    if "error" in doc:
        wanted = getattr(errors, doc["error"]["type"])
        with pytest.raises(errors.TcpfpError) as caught:
            parse_syn(raw)
        assert type(caught.value) is wanted, f"{type(caught.value).__name__}: {caught.value}"
        assert caught.value.offset == doc["error"]["offset"], str(caught.value)
        return
    fp = parse_syn(raw)
    obs = Observation(fingerprint=fp, saved_syn=raw)
    expected = doc["expected"]
    got = {name: render(BY_NAME[name], obs) for name in expected}
    assert got == expected
    assert render(BY_NAME["FINGERPRINT_SAVED_SYN"], obs) == doc["hex"]


@pytest.mark.parametrize("doc", [d for d in DOCS if "expected" in d], ids=_id)
def test_fixture_states_every_syn_field(doc: dict) -> None:
    missing = set(syn_cases.SYN_FIELD_NAMES) - set(doc["expected"])
    assert missing <= MAY_BE_UNSTATED
    assert set(doc["expected"]) <= set(syn_cases.SYN_FIELD_NAMES)


def test_corpus_fields_are_syn_fields_of_the_table() -> None:
    """Every field the corpus states exists in the field table and is read from the SYN."""
    for name in syn_cases.SYN_FIELD_NAMES:
        assert BY_NAME[name].source == "syn"


def test_files_are_exactly_the_written_cases() -> None:
    assert [d["name"] for d in DOCS] == sorted(c.name for c in syn_cases.CASES)
    assert [p.stem for p in FILES] == [d["name"] for d in DOCS]


@pytest.mark.parametrize("case", syn_cases.CASES, ids=lambda c: c.name)
def test_file_in_sync_with_its_definition(case: syn_cases.SynCase) -> None:
    """Rebuilding the case from syn_cases.py gives the stored file (rerun build_syn_fixtures.py)."""
    stored = json.loads((FIXTURES / "syn" / f"{case.name}.json").read_text())
    assert stored["hex"] == syn_cases.build(case).hex()
    assert stored == syn_cases.to_json(case)
