# The bench rig protocol (docs/design.md §5.3), defined once: what a HIL fixture can do to a
# pen besides talking to it. JSON lines: one request object per line, one reply object per
# line, every reply has "ok". Used by the simulated board (MicroPython: it is the virtual
# pen's plant), the virtual pen's supervisor (pensim), hil_tests/rig.py and the tests
# (CPython imports it as penctl.firmware.boards.rigproto). Written in the common subset.
import json

# Ops the virtual pen's supervisor answers itself (the interpreter may be off).
OP_POWER_CUT = "power_cut"        # cut the supply at once (SIGKILL the interpreter)
OP_POWER_ON = "power_on"
OP_STATUS = "status"              # supervisor state: powered, firmware or REPL, counters
SUPERVISOR_OPS = (OP_POWER_CUT, OP_POWER_ON, OP_STATUS)

# Ops the plant answers (forwarded to the simulated board's rig channel).
OP_INJECT = "inject"              # {"fault": FAULT}
OP_CLEAR_INJECTIONS = "clear_injections"
OP_CARTRIDGE = "cartridge"        # {"id": HEX or null, "used": bool}: insert (null: remove)
OP_LID = "lid"                    # {"closed": bool}
OP_HOLD_OUTPUT = "hold_output"    # {"ms": N}: the USB link stops draining for N ms of pen time
OP_MEASURE = "measure"            # true plant state (depth_um, hz, motor_on, uv_on, times ...)
PLANT_OPS = (OP_INJECT, OP_CLEAR_INJECTIONS, OP_CARTRIDGE, OP_LID, OP_HOLD_OUTPUT, OP_MEASURE)

OPS = SUPERVISOR_OPS + PLANT_OPS

# Faults the plant can inject ({"op": "inject", "fault": NAME}).
FAULTS = (
    "stall",            # rotor locked
    "overcurrent",      # partial winding short: +3 A while driven
    "overtemp",         # handpiece +12 degC
    "tach_loss",        # tach signal lost, rotor turning
    "depth_jam",        # carriage slips 150 um deeper and sticks
    "cartridge_out",    # cartridge removed
    "lid_open",         # dock lid opened
    "low_battery",      # cell at 3.15 V
    "uv_sensor_stuck",  # UV sensor reads a constant mid-scale value whatever the LED does
    "uv_led_dead",      # UV LED gives no light
    "motor_stuck_on",   # motor driver stuck on: the motor turns while commanded off
    "cartridge_memory_fail",  # the cartridge's 1-Wire memory does not answer (S19: CARTRIDGE_MEMORY)
)

HOLD_OUTPUT_MAX_MS = 600000       # longest hold_output a rig may ask for (10 min)


def encode(obj):
    """One protocol line (bytes, newline-terminated) for a request or reply dict."""
    return (json.dumps(obj) + "\n").encode()


def decode(line):
    """The dict of one protocol line (bytes or str, newline optional); ValueError if it is not
    a JSON object."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode()
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("a rig line must be a JSON object")
    return obj


def check_request(req):
    """None if `req` is a well-formed rig request, else the reason it is not (a str)."""
    op = req.get("op")
    if op not in OPS:
        return "unknown op %r" % (op,)
    if op == OP_INJECT and req.get("fault") not in FAULTS:
        return "unknown fault %r (one of %s)" % (req.get("fault"), ", ".join(FAULTS))
    if op == OP_CARTRIDGE:
        cart = req.get("id", 0)
        if not (cart is None or isinstance(cart, str)):
            return 'cartridge needs "id": a hex string or null'
        if not isinstance(req.get("used", False), bool):
            return '"used" must be true or false'
    if op == OP_LID and not isinstance(req.get("closed"), bool):
        return 'lid needs "closed": true or false'
    if op == OP_HOLD_OUTPUT:
        ms = req.get("ms")
        if type(ms) is not int or not 0 <= ms <= HOLD_OUTPUT_MAX_MS:
            return "hold_output needs \"ms\": an integer 0-%d" % HOLD_OUTPUT_MAX_MS
    return None
