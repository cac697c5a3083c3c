# S17 on the pen's CPU budget: the clinical module's every-pass service() call allocates nothing
# between its once-a-second updates (core 0 runs it every loop pass). MicroPython only
# (heap_lock); on CPython it is reported as skipped.
from clinicalfix import Rig


def test_s17_service_between_seconds_does_not_allocate():
    # service() runs every loop pass on core 0. Its elapsed-time accumulator outgrows the small
    # ints (2**30 on the RP2040 after 18 minutes; here pushed past 2**62, the unix port's
    # limit), after which every update allocates: between its once-a-second updates service()
    # must not touch it.
    import fwtest
    if not fwtest.on_micropython():
        fwtest.skip("heap_lock exists only on MicroPython")
    import micropython
    rig = Rig()
    rig.provision()
    for _ in range(3):
        rig.clock.us += (1 << 61) - 1       # just under half a ticks period per step
        rig.clin.service()
    assert rig.clin._elapsed_us > (1 << 62)     # a long int now
    rig.clock.us &= (1 << 62) - 1           # same ticks value; keeps the test's own clock small
    rig.nonce()
    micropython.heap_lock()
    try:
        for _ in range(100):
            rig.clock.us += 5000            # 5 ms per pass, 0.5 s in all
            rig.clin.service()
    finally:
        micropython.heap_unlock()
    rig.clock.us += 1000000
    rig.clin.service()                      # the once-a-second update still happens
    assert rig.clin._elapsed_us > (1 << 62) + 1500000
