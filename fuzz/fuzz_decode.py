"""atheris fuzz target for the gateway's decode path.

Any input must end in a decoded uint8 array or one of our GatewayError subclasses (which the
gateway maps to a 4xx); anything else escaping is a crash, reported by atheris.

    python fuzz/fuzz_decode.py -runs=20000 fuzz/corpus        # bounded (CI runs a short one)
    python fuzz/fuzz_decode.py -max_total_time=3600 fuzz/corpus  # the longer documented run
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["PIL", "service"]):
    from contract.manifest import InputSpec, Preprocessing
    from service.decode import DecodeLimits, configure_pillow, decode_image
    from service.errors import GatewayError

INPUT = InputSpec(height=32, width=32)
PRE = Preprocessing()
LIMITS = DecodeLimits(
    max_image_pixels=4_000_000, allowed_formats=("JPEG", "PNG", "WEBP", "GIF", "BMP")
)


def test_one_input(data: bytes) -> None:
    try:
        out = decode_image(data, input_spec=INPUT, preprocessing=PRE, limits=LIMITS)
    except GatewayError as exc:
        if not 400 <= exc.status < 500:
            raise AssertionError(f"decode raised a non-4xx error: {exc!r}") from exc
        return
    if out.shape != (32, 32, 3) or out.dtype.name != "uint8":
        raise AssertionError(f"bad output {out.shape} {out.dtype}")


def main() -> None:
    configure_pillow()  # as the gateway does at start
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
