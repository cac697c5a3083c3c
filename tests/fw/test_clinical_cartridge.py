# S19: single use is marked on the cartridge: the pen writes a write-once "used" mark in the
# cartridge's memory before the motor starts; a marked cartridge is refused on any pen
# (CARTRIDGE_USED). A mark that cannot be read or written refuses the session
# (CARTRIDGE_MEMORY). Runs on CPython and MicroPython. (The DS28E07 driver that holds the mark
# on the RP2040 board: test_clinical_ds28e07.py.)
from clinicalfix import Rig

CART = "2D00000000000A01"


def test_s19_mark_written_before_the_motor_may_start():
    rig = Rig()
    profile = rig.profile("crown")
    rig.board.insert(CART)
    rig.clin.check_session(profile, CART)
    assert rig.board.marks == {}              # checking marks nothing
    rig.clin.session_starting(profile, CART)  # the app's last step before the motor
    assert rig.board.marks == {CART: True} and rig.board.marks_written == 1


def test_s19_marked_cartridge_refused_on_any_pen():
    first = Rig("p1")
    second = Rig("p2")
    profile = first.profile("crown")
    first.session(profile, CART)
    # the cartridge moves to another pen: its memory goes with it
    second.board.marks = first.board.marks
    second.board.insert(CART)
    try:
        second.clin.check_session(second.profile("crown"), CART)
    except Exception as exc:
        assert exc.code == "CARTRIDGE_USED" and CART in exc.message
    else:
        raise AssertionError("a marked cartridge was accepted")
    # inserted already used elsewhere (the rig's cartridge op with "used": true)
    second.board.insert("2D00000000000A02", used=True)
    assert second.refusal(second.clin.check_session, second.profile("crown"), "2D00000000000A02") == "CARTRIDGE_USED"


def test_s19_unreadable_mark_refused():
    rig = Rig()
    rig.board.insert(CART)
    rig.board.fail_read = True
    assert rig.refusal(rig.clin.check_session, rig.profile("crown"), CART) == "CARTRIDGE_MEMORY"


def test_s19_mark_that_cannot_be_written_refuses_the_session():
    rig = Rig()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=1767225600)["ok"]
    rig.board.insert(CART)
    rig.clin.check_session(profile, CART)
    rig.board.fail_mark = True
    assert rig.refusal(rig.clin.session_starting, profile, CART) == "CARTRIDGE_MEMORY"
    # nothing was recorded for the interval either: the mark comes first
    assert rig.clin.intervals.record["last"] == {}


def test_s19_board_without_cartridge_memory_refuses():
    class BareBoard:
        serial = "X"

        def __init__(self, clock):
            self.ticks_us = clock.ticks_us

    from pen.clinical import Clinical
    rig = Rig()
    clin = Clinical(rig.store, BareBoard(rig.clock))
    assert rig.refusal(clin.check_session, rig.profile("crown"), CART) == "CARTRIDGE_MEMORY"
    assert rig.refusal(clin.session_starting, rig.profile("crown"), CART) == "CARTRIDGE_MEMORY"


def test_s19_mark_answer_must_be_a_bool():
    rig = Rig()
    rig.board.insert(CART)
    for answer in (None, 1, "no"):
        rig.board.cartridge_used = lambda answer=answer: answer
        assert rig.refusal(rig.clin.check_session, rig.profile("crown"), CART) == "CARTRIDGE_MEMORY", answer
