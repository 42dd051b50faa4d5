"""What the recorder keeps of a failed request: the server's text, one line, bounded."""

from __future__ import annotations

import pytest

from loadtest.recorder import MAX_ERROR_TEXTS, OTHER_ERRORS, StepRecorder, error_text


@pytest.mark.parametrize(
    "status, detail, text",
    [
        ("INVALID_ARGUMENT", "input images has shape\n [1, 2]", "INVALID_ARGUMENT: input images has shape [1, 2]"),
        (413, b'{"error":"image_too_large","detail":"30 MB > 20 MB","request_id":"r1"}', "HTTP 413 image_too_large: 30 MB > 20 MB"),
        (503, b'{"error":"queue_full","request_id":"r2"}', "HTTP 503 queue_full"),
        (502, b"<html>Bad Gateway</html>", "HTTP 502 <html>Bad Gateway</html>"),
        (500, b"", "HTTP 500 (empty)"),
    ],
)  # fmt: skip
def test_error_texts_are_one_line_without_request_ids(
    status: int | str, detail: bytes | str, text: str
) -> None:
    assert error_text(status, detail) == text


def test_distinct_error_texts_are_bounded() -> None:
    rec = StepRecorder(0.0, open_loop=False)
    for i in range(MAX_ERROR_TEXTS + 5):
        rec.record(1.0, 1.0, 1.1, "INTERNAL", False, None, None, f"failure number {i}")
        rec.record(1.0, 1.0, 1.1, "INTERNAL", False, None, None, "failure number 0")
    texts = rec.partial().error_details
    assert len(texts) == MAX_ERROR_TEXTS + 1 and texts[OTHER_ERRORS] == 5
    assert texts["INTERNAL: failure number 0"] == MAX_ERROR_TEXTS + 6
