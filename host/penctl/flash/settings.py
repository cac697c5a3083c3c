"""Tunables of `penctl flash` (seconds / bytes), in one place. Module attributes, read when used, so
tests and callers can override them (`penctl.flash.settings.TIMEOUT_SILENT = 1.0`)."""

TIMEOUT_SILENT = 3.0      # the pen silent this long in the middle of a step: it is gone
TIMEOUT_RAW_REPL = 5.0    # Ctrl-C until the raw REPL prompt
TIMEOUT_STEP = 30.0       # one device-side step (hashing, writing a batch, verifying), overall
TIMEOUT_BOOT = 10.0       # soft reset until the firmware answers a ping
PROBE_TIMEOUT = 3.0       # busy guard: how long the pen has to answer `info` before flash refuses
PING_FIRST_WAIT = 0.05    # the first ping's wait for an answer after the reset (doubles up to 1 s)
WRITE_BATCH_BYTES = 8192  # file bytes per write exec (~11 KB of base64 source: fits an RP2040 heap)
BAUDRATE = 115200         # USB-CDC ignores it; kept for real UARTs
