"""penctl: host tool and library for the microneedling pen (docs/design.md §4).

    from penctl import Pen
    with Pen("/dev/ttyACM0") as pen:
        print(pen.info())
"""

from penctl.client import Pen

__all__ = ["Pen"]
