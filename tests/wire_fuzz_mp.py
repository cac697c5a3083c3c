# Decodes a batch of fuzz inputs with pen.wire.decode and prints one verdict line per
# input, so that the same batch can be judged on MicroPython and on CPython
# (tests/test_wire_fuzz_micropython.py). Common subset of both interpreters.
#
# Usage (from the repository root):
#     micropython tests/wire_fuzz_mp.py FILE
# FILE holds one input per line, in hex (an empty line is the empty input).
# Output, one line per input, in order:
#     ok <kind> <num> <body fingerprint>
#     err <CODE>
#     CRASH <exception type> <message>
import sys
from binascii import unhexlify

sys.path.insert(0, "firmware")

from pen import wire  # noqa: E402


def _show(value):
    """A text fingerprint of a decoded body that reads the same on both interpreters
    (strings as code points; floats by kind only: their last digits may differ)."""
    if value is None:
        return "N"
    if value is True:
        return "T"
    if value is False:
        return "F"
    kind = type(value)
    if kind is int:
        return "i%d" % value
    if kind is float:
        if value != value:
            return "fnan"
        if value in (float("inf"), float("-inf")):
            return "f%s" % ("+inf" if value > 0 else "-inf")
        return "f"
    if kind is str:
        return "s" + ".".join(["%x" % ord(ch) for ch in value])
    if kind is list:
        return "[" + ",".join([_show(item) for item in value]) + "]"
    if kind is dict:
        keys = sorted(value)
        return "{" + ",".join([_show(key) + ":" + _show(value[key]) for key in keys]) + "}"
    return "?" + kind.__name__


def verdict(data):
    try:
        kind, num, body = wire.decode(data)
    except wire.WireError as exc:
        return "err %s" % exc.code
    except Exception as exc:  # noqa: BLE001 - the point is to report anything else
        return "CRASH %s %s" % (type(exc).__name__, str(exc)[:80].replace("\n", " "))
    try:
        shown = _show(body)
    except Exception as exc:  # noqa: BLE001
        shown = "?%s" % type(exc).__name__
    return "ok %s %d %s" % (kind, num, shown)


def main(path):
    count = 0
    with open(path) as handle:
        for line in handle:
            text = line.strip()
            try:
                data = unhexlify(text)
            except Exception:  # noqa: BLE001
                print("CRASH BadHex input line %d" % (count + 1))
                count += 1
                continue
            print(verdict(data))
            count += 1
    print("DONE %d" % count)


if __name__ == "__main__":
    main(sys.argv[1])
