# Persistent records that survive power loss at any instant (S7).
#
# Each record is one file: a header line "PENREC <schema> <length> <crc32>"
# and a canonical-JSON body. A write goes to "<name>.tmp" first and is then
# renamed over the record: rename is atomic on LittleFS and POSIX, so after a
# power cut the record is the old version or the new one, never a mix. A
# record that is missing, truncated or fails its CRC reads as None; callers
# pick the safe default (the lockout record's is LOCKED).
import json
import os

try:
    from binascii import crc32
except ImportError:  # pragma: no cover
    from zlib import crc32  # type: ignore

from .wire import dumps

SCHEMA = 1
_MAGIC = "PENREC"


class StoreError(Exception):
    pass


class Store:
    def __init__(self, folder):
        self.folder = folder
        try:
            os.mkdir(folder)
        except OSError:
            pass  # exists
        self.corrupt_reads = 0

    def _path(self, name):
        return self.folder + "/" + name + ".rec"

    def exists(self, name):
        """A record file is there (intact or not)."""
        try:
            os.stat(self._path(name))
            return True
        except OSError:
            return False

    def read(self, name):
        """The record's body (dict), or None if missing or not intact."""
        try:
            with open(self._path(name), "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        try:
            newline = data.index(b"\n")
            fields = data[:newline].decode().split(" ")
            body = data[newline + 1:]
            if (len(fields) != 4 or fields[0] != _MAGIC or int(fields[1]) != SCHEMA
                    or int(fields[2]) != len(body)
                    or int(fields[3], 16) != crc32(body) & 0xFFFFFFFF):
                raise ValueError
            value = json.loads(body)
            if not isinstance(value, dict):
                raise ValueError
            return value
        except Exception:
            self.corrupt_reads += 1
            return None

    def write(self, name, value):
        body = dumps(value).encode()
        header = "%s %d %d %08x\n" % (_MAGIC, SCHEMA, len(body), crc32(body) & 0xFFFFFFFF)
        final = self._path(name)
        temp = final + ".tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(header.encode())
                handle.write(body)
            os.rename(temp, final)
        except OSError as exc:
            raise StoreError("cannot write %s: %s" % (name, exc))
