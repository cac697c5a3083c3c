# How the REPL shim (repl_shim.py, a MicroPython script) tells the supervisor what it is doing,
# defined once for both sides: the shim imports this file from its own folder, the supervisor as
# pensim.shim_protocol. Written in the subset MicroPython and CPython share.

# Exit codes of the shim.
EXIT_REBOOT_FRIENDLY = 10   # soft reboot from the friendly REPL: boot main.py if there is one
EXIT_REBOOT_RAW = 11        # soft reboot from the raw REPL: a new shim in the raw REPL, no main.py
EXIT_HARD_RESET = 12        # machine.reset(): the pen restarts as from power-on

# Status bytes, one per change of state, on the inherited status pipe.
STATUS_BUSY = b"B"          # running code, Ctrl-C raises KeyboardInterrupt
STATUS_BUSY_NOINTR = b"b"   # running code with Ctrl-C disabled (micropython.kbd_intr(-1))
STATUS_FRIENDLY = b"F"      # idle in the friendly REPL
STATUS_RAW = b"R"           # idle in the raw REPL
STATUS_RESET = b"X"         # machine.reset() called: the supervisor restarts the pen even if the
                            # code goes on (a board's reset cannot be caught)
