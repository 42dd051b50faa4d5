"""The mutation check's bookkeeping: which survivors are explained, and which explanations
went stale (their line left the source), without running mutmut."""

from __future__ import annotations

from benchmarks.mutation import explain, load_explanations, message_only, stale_entries


def test_every_entry_of_the_survivors_file_still_names_a_line_of_its_module() -> None:
    """An entry whose line is gone would only hide a future mutant: the file is kept in step."""
    modules = ["contract/manifest.py", "service/breaker.py", "service/admission.py",
               "service/batcher.py", "service/decode.py", "service/backends/tfserving.py"]  # fmt: skip
    assert stale_entries(modules, load_explanations()) == []


def test_an_entry_for_a_removed_line_is_stale() -> None:
    gone = {"function": "service.breaker.CircuitBreaker.allow", "minus": "x = 'not in the source'",
            "plus": "x = None", "why": "-"}  # fmt: skip
    here = {"function": "service.breaker.CircuitBreaker.allow", "minus": "import", "plus": "",
            "why": "-"}  # fmt: skip
    assert stale_entries(["service/breaker.py"], {"survivor": [gone, here]}) == [gone]


def test_an_entry_for_a_change_across_lines_is_not_stale() -> None:
    """mutmut prints a dropped last argument with the call's closing bracket on one line."""
    entry = {"function": "service.decode._decode_opened", "minus": "reducing_gap=_REDUCING_GAP, )",
             "plus": ")", "why": "-"}  # fmt: skip
    assert stale_entries(["service/decode.py"], {"survivor": [entry]}) == []


def test_a_survivor_is_explained_by_its_entry_or_a_rule_and_nothing_else() -> None:
    known = {
        "rules": {"message": "text only"},
        "survivor": [{"function": "m.f", "minus": "a = 1", "plus": "a = 2", "why": "because"}],
    }
    assert explain("m.f", "a = 1", "a = 2", known) == "because"
    assert explain("m.g", "a = 1", "a = 2", known) is None  # another function
    assert explain("m.f", "a = 1", "a = 3", known) is None  # another mutant
    assert explain("m.f", 'raise E(f"x {y}")', "raise E(None)", known) == "text only"
    assert not message_only('raise E("x")', 'raise F("x")')  # another class is behaviour
    assert not message_only('raise E("x", retry_after_s=1)', 'raise E("x", retry_after_s=2)')
    # an error returned to be raised elsewhere is a message too; a result object is not
    assert message_only('return BackendError(f"{what}: x")', "return BackendError(None)")
    assert not message_only("return ModelVersions(states, errors, resolved)",
                            "return ModelVersions(states, None, resolved)")  # fmt: skip
