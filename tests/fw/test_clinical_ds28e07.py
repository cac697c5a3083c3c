# S19 on the RP2040 board: the DS28E07 driver (firmware/boards/ds28e07.py) marks a cartridge
# used through the part's real command sequence. The part is emulated byte by byte behind the
# onewire.OneWire API (reset / writebyte / write / readbyte / readinto / crc8) with the data
# sheet's behaviour: MATCH ROM addressing, the 8-byte scratchpad with its inverted CRC-16, the
# E/S byte, COPY SCRATCHPAD's authorisation bytes and tPROG, page protection (0x55) and EPROM
# emulation (0xAA: the scratchpad takes data AND memory), READ MEMORY without CRC. Runs on
# CPython and MicroPython.
from boards.ds28e07 import EPROM_MODE, CartridgeMemoryError, DS28E07, crc16

ROM_BODY = bytes((0x2D, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66))
T_PROG_MS = 10          # the part's programming time (data sheet maximum)


def crc8(data):
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


ROM = ROM_BODY + bytes((crc8(ROM_BODY),))


class Part:
    """A DS28E07 on a 1-Wire contact, as the driver sees it through onewire.OneWire."""

    def __init__(self, page3_mode=EPROM_MODE, rom=ROM):
        self.rom = rom
        self.memory = bytearray(b"\x00" * 0x80 + b"\x00" * 0x10)
        for address in range(0x60, 0x80):
            self.memory[address] = 0xFF
        self.memory[0x83] = page3_mode
        self.memory[0x85] = 0x55
        self.present = True
        self.ignore_copies = False      # a clone: says 0xAA but never programs
        self.fail_copies = False        # a copy the part refuses (0xFF)
        self.stale_scratchpad = False   # answers WRITE SCRATCHPAD's CRC but keeps its old contents
        self.flip_read = None           # index of a READ MEMORY byte to corrupt once
        self.now_ms = 0
        self.violations = []            # bus activity during programming
        self.commands = []
        self.scratch = bytearray(8)
        self.ta = 0
        self.es = 0
        self._state = "idle"
        self._tx = []
        self._rx = []
        self._busy_until = -1

    # -- the master's side: onewire.OneWire --

    def sleep_ms(self, ms):
        self.now_ms += ms

    def reset(self):
        if self.now_ms < self._busy_until:
            self.violations.append("reset during tPROG")
        if self._state == "ws_data":
            self.es |= 0x20             # fewer bytes than the scratchpad's end: PF
        self._state = "rom"
        self._rx = []
        self._tx = []
        return self.present

    def writebyte(self, value):
        self._receive(value & 0xFF)

    def write(self, buf):
        for value in buf:
            self._receive(value)

    def readbyte(self):
        if self.now_ms < self._busy_until:
            self.violations.append("read during tPROG")
        return self._tx.pop(0) if self._tx else 0xFF

    def readinto(self, buf):
        for index in range(len(buf)):
            buf[index] = self.readbyte()

    def crc8(self, data):
        return crc8(data)

    # -- the part --

    def _protected(self, address):
        page = address >> 5
        return address < 0x80 and self.memory[0x80 + page] == 0x55

    def _eprom(self, address):
        page = address >> 5
        return address < 0x80 and self.memory[0x80 + page] == 0xAA

    def _receive(self, value):
        state = self._state
        rx = self._rx
        if state == "rom":
            if value == 0x33:
                self._tx = list(self.rom)
                self._state = "done"
            elif value == 0x55:
                self._state = "match"
            else:
                self._state = "done"
        elif state == "match":
            rx.append(value)
            if len(rx) == 8:
                self._state = "func" if bytes(rx) == self.rom else "done"
                self._rx = []
        elif state == "func":
            self.commands.append(value)
            self._state = {0x0F: "ws_addr", 0xAA: "rs", 0x55: "cps", 0xF0: "rm"}.get(value, "done")
            if value == 0xAA:
                self._read_scratchpad()
        elif state == "ws_addr":
            rx.append(value)
            if len(rx) == 2 and self.stale_scratchpad:
                crc_bytes = [0x0F, rx[0], rx[1]]
                self._state = "ws_ignored"
                self._rx = crc_bytes
            elif len(rx) == 2:
                self.ta = rx[0] | rx[1] << 8
                self.es = self.ta & 7
                self._crc_bytes = [0x0F, rx[0], rx[1]]
                self._state = "ws_data"
                self._rx = []
        elif state == "ws_data":
            self.scratch[self.es & 7] = value
            self._crc_bytes.append(value)
            if self.es & 7 == 7:
                crc = crc16(bytes(self._crc_bytes)) ^ 0xFFFF
                self._tx = [crc & 0xFF, crc >> 8]
                row = self.ta & ~7
                if self._protected(self.ta):
                    self.scratch[:] = self.memory[row:row + 8]
                elif self._eprom(self.ta):
                    for index in range(8):
                        self.scratch[index] &= self.memory[row + index]
                self._state = "done"
            else:
                self.es += 1
        elif state == "ws_ignored":
            rx.append(value)
            if len(rx) == 11:
                crc = crc16(bytes(rx)) ^ 0xFFFF
                self._tx = [crc & 0xFF, crc >> 8]
                self._state = "done"
        elif state == "cps":
            rx.append(value)
            if len(rx) == 3:
                self._state = "done"
                authorised = rx[0] == self.ta & 0xFF and rx[1] == self.ta >> 8 and rx[2] == self.es
                if not authorised or self.es & 0x20 or self._protected(self.ta) or self.fail_copies:
                    return
                self.es |= 0x80
                if not self.ignore_copies:
                    row = self.ta & ~7
                    for index in range(8):
                        self.memory[row + index] = self.scratch[index]
                self._busy_until = self.now_ms + T_PROG_MS
                self._tx = [0xAA] * 4
        elif state == "rm":
            rx.append(value)
            if len(rx) == 2:
                address = rx[0] | rx[1] << 8
                data = list(self.memory[address:0x90])
                if self.flip_read is not None:
                    data[self.flip_read] ^= 0x01
                    self.flip_read = None
                self._tx = data
                self._state = "done"

    def _read_scratchpad(self):
        start = self.ta & 7
        out = [self.ta & 0xFF, self.ta >> 8, self.es] + list(self.scratch[start:(self.es & 7) + 1])
        crc = crc16(bytes([0xAA] + out)) ^ 0xFFFF
        self._tx = out + [crc & 0xFF, crc >> 8]
        self._state = "done"


def _driver(part):
    return DS28E07(part, sleep_ms=part.sleep_ms)


def test_s19_crc16_is_the_1wire_crc():
    assert crc16(b"123456789") == 0xBB3D          # CRC-16/ARC check value: x^16 + x^15 + x^2 + 1
    assert crc16(b"") == 0


def test_s19_fresh_cartridge_marked_once_and_for_all():
    part = Part()
    driver = _driver(part)
    assert driver.read_rom() == ROM
    assert driver.is_used(ROM) is False
    driver.mark_used(ROM)
    assert driver.is_used(ROM) is True
    assert bytes(part.memory[0x60:0x68]) == bytes(8)
    assert bytes(part.memory[0x68:0x80]) == b"\xff" * 24          # the rest of page 3 untouched
    assert part.memory[0x83] == 0xAA and part.violations == []
    assert 0x0F in part.commands and 0xAA in part.commands and 0x55 in part.commands
    # EPROM emulation: writing 0xFF back cannot clear the mark
    driver.write_row(ROM, 0x60, b"\xff" * 8)
    assert driver.is_used(ROM) is True and bytes(part.memory[0x60:0x68]) == bytes(8)


def test_s19_partly_cleared_mark_reads_as_used():
    part = Part()
    part.memory[0x65] = 0xFE                                       # a torn write: one bit
    assert _driver(part).is_used(ROM) is True


def test_s19_cartridge_that_cannot_hold_the_mark_refused():
    for mode in (0x55, 0x00, 0xFF):
        part = Part(page3_mode=mode)
        driver = _driver(part)
        for call in (driver.is_used, driver.mark_used):
            try:
                call(ROM)
            except CartridgeMemoryError:
                pass
            else:
                raise AssertionError("page 3 mode %02x accepted" % mode)
        assert bytes(part.memory[0x60:0x68]) == b"\xff" * 8


def test_s19_clone_that_ignores_writes_detected():
    part = Part()
    part.ignore_copies = True
    try:
        _driver(part).mark_used(ROM)
    except CartridgeMemoryError as exc:
        assert "stick" in str(exc)
    else:
        raise AssertionError("a mark that did not stick was reported written")


def test_s19_refused_copy_and_missing_part_raise():
    part = Part()
    part.fail_copies = True
    try:
        _driver(part).mark_used(ROM)
    except CartridgeMemoryError as exc:
        assert "not confirmed" in str(exc)
    else:
        raise AssertionError("unconfirmed copy accepted")
    part = Part()
    part.present = False
    assert _driver(part).read_rom() is None
    try:
        _driver(part).is_used(ROM)
    except CartridgeMemoryError:
        pass
    else:
        raise AssertionError("no presence pulse accepted")


def test_s19_inconsistent_reads_raise():
    part = Part()
    part.flip_read = 3
    try:
        _driver(part).is_used(ROM)
    except CartridgeMemoryError as exc:
        assert "disagree" in str(exc)
    else:
        raise AssertionError("a corrupted read was believed")


def test_s19_other_cartridge_rom_not_touched():
    part = Part()
    other = bytes((0x2D, 9, 9, 9, 9, 9, 9))
    other += bytes((crc8(other),))
    try:
        _driver(part).mark_used(other)
    except CartridgeMemoryError:
        pass
    else:
        raise AssertionError("marked through another cartridge's ROM ID")
    assert bytes(part.memory[0x60:0x68]) == b"\xff" * 8


def test_s19_wrong_family_rom_ignored():
    body = bytes((0x28,)) + ROM_BODY[1:]           # a DS18B20's family code, valid CRC
    part = Part(rom=body + bytes((crc8(body),)))
    assert _driver(part).read_rom() is None
    body = ROM_BODY
    part = Part(rom=body + bytes((crc8(body) ^ 1,)))  # our family, bad CRC
    assert _driver(part).read_rom() is None


def test_s19_scratchpad_checked_before_the_copy():
    # The part echoes a good CRC but its scratchpad still holds an earlier row (address 0x40):
    # the driver must see it in READ SCRATCHPAD and never send COPY SCRATCHPAD.
    part = Part()
    part.ta = 0x40
    part.es = 0x07
    part.stale_scratchpad = True
    try:
        _driver(part).mark_used(ROM)
    except CartridgeMemoryError as exc:
        assert "scratchpad holds address" in str(exc)
    else:
        raise AssertionError("copied a scratchpad it did not verify")
    assert 0x55 not in part.commands
    assert bytes(part.memory[0x40:0x48]) == bytes(8) and bytes(part.memory[0x60:0x68]) == b"\xff" * 8

