"""`penctl flash`: compile the firmware to .mpy and deploy it to a pen, atomically (docs/design.md §4.3).

    build     compile with mpy-cross, content-addressed cache
    guard     the busy guard: break in only into an idle pen or one at the REPL (fail closed)
    device    the code run on the pen (raw REPL) and the parser of its output
    plan      pure functions: which slot, what to write, copy, remove; the factory-image fallback
    rawrepl   the raw REPL over mpremote's transport (the only module importing mpremote)
    deploy    the procedure: flash_firmware(), ping(), roll back
    settings  timeouts and batch size, in one place
"""

from penctl.flash.build import (Build, Built, compile_firmware, default_cache_dir, firmware_dir,
                                firmware_sources)
from penctl.flash.deploy import NotStarted, flash_firmware, ping
from penctl.flash.guard import check_idle
from penctl.flash.plan import ARCHS, Adoption, PenFiles, Plan, check_loadable, make_plan

_firmware_dir = firmware_dir   # the name hil_tests use

__all__ = ["ARCHS", "Adoption", "Build", "Built", "NotStarted", "PenFiles", "Plan", "check_idle",
           "check_loadable", "compile_firmware", "default_cache_dir", "firmware_dir", "firmware_sources",
           "flash_firmware", "make_plan", "ping"]
