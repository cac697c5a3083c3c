# The needle cartridge's memory: a DS28E07 1024-bit 1-Wire EEPROM (family 0x2D, the DS2431's
# command set), for the RP2040 board. Its 64-bit ROM ID is the cartridge ID (S6); page 3 holds
# the write-once "used" mark (S19). Part, memory map and data-sheet facts: docs/clinical.md
# "Cartridge memory" (for docs/hardware.md).
#
# Memory map relied on (DS28E07 data sheet, "Memory Resources"):
#   0x00-0x7F  four 32-byte user pages; 0x80-0x83 page protection bytes (0x55 write-protect,
#   0xAA EPROM emulation: bits only go 1 -> 0; either value also locks the byte itself);
#   0x84 copy protection, 0x85 factory byte, 0x86-0x87 user bytes / manufacturer ID.
# The cartridge maker fills page 3 with 0xFF and sets 0x83 = 0xAA. The mark is the row
# 0x60-0x67 written to 0x00: in EPROM mode the part ANDs new data with the old, so no write can
# set those bits back. Used = any bit of the row cleared (a torn write reads as used). A
# cartridge whose page 3 is not in EPROM mode is refused: a write-protected page would take no
# mark at all, and an unprotected one could be erased.
#
# Writes follow the data sheet: WRITE SCRATCHPAD (0x0F, TA1, TA2, 8 bytes, inverted CRC-16 back),
# READ SCRATCHPAD (0xAA) to verify TA, E/S and data, COPY SCRATCHPAD (0x55) with the
# authorisation bytes TA1 TA2 E/S, tPROG with the bus idle, then 0xAA bytes mean success.
# Every transaction selects the part with MATCH ROM, so the mark lands on the cartridge whose
# ID was checked. READ MEMORY has no CRC: it is read twice and must agree.
#
# Loop context only (core 0, between requests): a mark takes ~15 ms, most of it tPROG.
import time

from micropython import const

FAMILY = const(0x2D)
_READ_ROM = const(0x33)
_MATCH_ROM = const(0x55)
_WRITE_SCRATCHPAD = const(0x0F)
_READ_SCRATCHPAD = const(0xAA)
_COPY_SCRATCHPAD = const(0x55)
_READ_MEMORY = const(0xF0)
_COPY_OK = const(0xAA)          # the part answers 0xAA bytes after a successful copy

MARK_ADDR = const(0x60)         # page 3, first row: the used mark
PROTECT_PAGE3 = const(0x83)     # page 3 protection byte
EPROM_MODE = const(0xAA)
_ROW = const(8)                 # scratchpad size: writes are whole 8-byte rows
_ES_ROW = const(0x07)           # E/S after a whole row from offset 0: E=7, PF=0, AA=0
_SPAN = const(PROTECT_PAGE3 - MARK_ADDR + 1)   # bytes read for a mark check: 0x60..0x83
# tPROG: 10 ms maximum in the DS2431 / DS28E07 data sheets; waited with margin. A part still
# programming answers 0xFF, which reads as a failed copy: never as success.
T_PROG_MS = const(13)
_TRIES = const(3)


class CartridgeMemoryError(Exception):
    pass


def crc16(data, crc=0):
    """1-Wire CRC-16 (x^16 + x^15 + x^2 + 1, LSB first); the part sends its inverse."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class DS28E07:
    def __init__(self, ow, sleep_ms=None):
        self.ow = ow                      # onewire.OneWire on the cartridge contact
        self.sleep_ms = sleep_ms if sleep_ms is not None else time.sleep_ms

    def _select(self, rom):
        if not self.ow.reset():
            raise CartridgeMemoryError("no presence pulse")
        self.ow.writebyte(_MATCH_ROM)
        self.ow.write(rom)

    def read_rom(self):
        """The 8 ROM bytes (family, serial, CRC) of the single part on the contact, or None."""
        ow = self.ow
        buf = bytearray(8)
        for _ in range(_TRIES):
            try:
                if not ow.reset():
                    continue
                ow.writebyte(_READ_ROM)
                ow.readinto(buf)
            except Exception:   # OneWireError, OSError: contact bounce
                continue
            # CRC over all 8 bytes is 0 when valid; all-zero passes, the family check rejects it.
            if ow.crc8(buf) == 0 and buf[0] == FAMILY:
                return bytes(buf)
        return None

    def read_memory(self, rom, address, length):
        """`length` bytes from `address`, read twice (READ MEMORY has no CRC); they must agree."""
        reads = []
        for _ in range(2):
            self._select(rom)
            ow = self.ow
            ow.writebyte(_READ_MEMORY)
            ow.writebyte(address & 0xFF)
            ow.writebyte(address >> 8)
            buf = bytearray(length)
            ow.readinto(buf)
            reads.append(buf)
        if reads[0] != reads[1]:
            raise CartridgeMemoryError("memory reads disagree")
        return bytes(reads[0])

    def write_row(self, rom, address, data):
        """Program one 8-byte row through the scratchpad; CartridgeMemoryError if any step fails."""
        if address % _ROW or len(data) != _ROW:
            raise ValueError("a whole 8-byte row")
        ta1 = address & 0xFF
        ta2 = address >> 8
        ow = self.ow
        # 1. WRITE SCRATCHPAD; the part answers the inverted CRC-16 of command, address, data.
        self._select(rom)
        header = bytes((_WRITE_SCRATCHPAD, ta1, ta2))
        ow.write(header)
        ow.write(data)
        echo = bytearray(2)
        ow.readinto(echo)
        if (echo[0] | echo[1] << 8) ^ 0xFFFF != crc16(data, crc16(header)):
            raise CartridgeMemoryError("write scratchpad CRC mismatch")
        # 2. READ SCRATCHPAD: address, E/S and the data as the part will copy it (in EPROM mode
        # that is data AND memory), then the inverted CRC-16.
        self._select(rom)
        ow.writebyte(_READ_SCRATCHPAD)
        back = bytearray(3 + _ROW + 2)
        ow.readinto(back)
        crc = crc16(back[:3 + _ROW], crc16(bytes((_READ_SCRATCHPAD,))))
        if (back[3 + _ROW] | back[4 + _ROW] << 8) ^ 0xFFFF != crc:
            raise CartridgeMemoryError("read scratchpad CRC mismatch")
        if back[0] != ta1 or back[1] != ta2 or back[2] != _ES_ROW:
            raise CartridgeMemoryError("scratchpad holds address %02x%02x E/S %02x" % (back[1], back[0], back[2]))
        # 3. COPY SCRATCHPAD with the authorisation bytes TA1 TA2 E/S; the bus stays idle for
        # tPROG (the part is powered from the pull-up while it programs), then 0xAA = done.
        self._select(rom)
        ow.write(bytes((_COPY_SCRATCHPAD, ta1, ta2, _ES_ROW)))
        self.sleep_ms(T_PROG_MS)
        if ow.readbyte() != _COPY_OK:
            raise CartridgeMemoryError("copy scratchpad not confirmed")
        return bytes(back[3:3 + _ROW])

    def is_used(self, rom):
        """True if the cartridge carries the used mark. CartridgeMemoryError if page 3 is not
        write-once (EPROM mode) or the memory cannot be read consistently."""
        span = self.read_memory(rom, MARK_ADDR, _SPAN)
        if span[PROTECT_PAGE3 - MARK_ADDR] != EPROM_MODE:
            raise CartridgeMemoryError("page 3 is not in EPROM mode: not a single-use cartridge")
        for index in range(_ROW):
            if span[index] != 0xFF:
                return True
        return False

    def mark_used(self, rom):
        """Write the used mark and read it back; CartridgeMemoryError unless it is there."""
        self.is_used(rom)          # refuses a cartridge that cannot hold the mark
        self.write_row(rom, MARK_ADDR, bytes(_ROW))
        if not self.is_used(rom):
            raise CartridgeMemoryError("the used mark did not stick")
        row = self.read_memory(rom, MARK_ADDR, _ROW)
        for byte in row:
            if byte:
                raise CartridgeMemoryError("the used mark is incomplete")
