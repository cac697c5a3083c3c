# Stand-in firmware for tests/test_simpen.py (a MicroPython script, installed as main.py).
# Prints "tick N" every 10 ms, echoes console lines, answers the rig channel, and on
# KeyboardInterrupt (Ctrl-C -> SIGINT from the supervisor) says so and exits.
import json
import os
import select
import sys
import time

out = sys.stdout.buffer
rin = open(os.getenv("PEN_SIM_RIG_IN"), "rb")  # noqa: SIM115
rout = open(os.getenv("PEN_SIM_RIG_OUT"), "wb")  # noqa: SIM115
rig_poll = select.poll()
rig_poll.register(rin, select.POLLIN)
con_poll = select.poll()
con_poll.register(sys.stdin, select.POLLIN)

cartridge = None
injected = []
line = b""
n = 0
out.write(("fixture: boot serial=%s clock=%s\n" % (os.getenv("PEN_SIM_SERIAL"), os.getenv("PEN_SIM_CLOCK"))).encode())
try:
    while True:
        n += 1
        out.write(("tick %d\n" % n).encode())
        if rig_poll.poll(0):
            req = json.loads(rin.readline())
            op = req.get("op")
            rep = {"ok": True, "op": op, "fixture": True}
            if op == "cartridge":
                cartridge = req.get("id")
            elif op == "inject":
                injected.append(req.get("fault"))
            elif op == "clear_injections":
                injected = []
            elif op == "measure":
                rep.update({"motor_on": True, "uv_on": False, "hz": 100, "depth_um": 500,
                            "cartridge": cartridge, "injected": injected, "ticks": n})
            rout.write((json.dumps(rep) + "\n").encode())  # no flush(): fsync on a pipe is EINVAL
        while con_poll.poll(0):
            c = sys.stdin.buffer.read(1)
            if c == b"\n" or c == b"\r":
                if line == b"crash":
                    raise ValueError("fixture crash")
                if line:
                    out.write(b"echo: " + line + b"\n")
                line = b""
            else:
                line += c
        time.sleep_ms(10)
except KeyboardInterrupt:
    out.write(b"fixture: KeyboardInterrupt, motor off\n")
