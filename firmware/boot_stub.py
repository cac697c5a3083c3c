# Boot stub: `penctl flash` (host/penctl/flash.py) installs this file as the
# pen's /main.py. It stays the same across firmware versions; the firmware
# itself lives in two slots, compiled to .mpy:
#
#   fw/a/ , fw/b/        main.mpy, pen/*.mpy, boards/*.mpy
#   fw/<slot>/complete   written last, after the host verified every file of
#                        the slot; holds the slot's generation (decimal)
#   fw/active            "a" or "b": the slot to boot (replaced atomically:
#                        temp file + os.rename, on LittleFS and POSIX alike)
#
# The host only ever writes the slot that does not boot, and it removes that
# slot's `complete` marker before touching any of its files. So whatever
# instant the power goes, the pen boots a whole, verified firmware or none.
#
# The stub drives no hardware: the firmware's main() stops the motor first on
# any exception, Ctrl-C included (S9). With no complete slot it raises, and
# the pen sits at the REPL, ready for `penctl flash`.
import os
import sys

SLOTS = ("a", "b")
POINTER = "fw/active"
MARK = "complete"


def slot_dir(slot):
    return "fw/" + slot


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except Exception:  # missing, unreadable or not text: same as absent
        return None


def generation(text):
    """The generation a `complete` marker holds; None for no (or a corrupt) marker."""
    if not text or not text.isdigit():
        return None
    return int(text)


def pick(pointer, gens):
    """The slot to boot, or None.

    `pointer` is the text of fw/active (None if missing), `gens` maps each slot
    to its generation (None: not complete). The pointer wins when its slot is
    complete; a missing or corrupt pointer falls back to the newest complete slot.
    """
    if pointer in SLOTS and gens.get(pointer) is not None:
        return pointer
    best = None
    for slot in SLOTS:
        gen = gens.get(slot)
        if gen is not None and (best is None or gen > gens[best]):
            best = slot
    return best


def boot():
    gens = {}
    for slot in SLOTS:
        gens[slot] = generation(_read(slot_dir(slot) + "/" + MARK))
    slot = pick(_read(POINTER), gens)
    if slot is None:
        raise RuntimeError("no complete firmware in fw/a or fw/b: flash one with `penctl flash`")
    # The slot first; the flash root ("" on a board, the script's folder on the
    # unix port) off the path, so stray modules there never shadow the firmware.
    root = os.getcwd()
    sys.path[:] = [slot_dir(slot)] + [p for p in sys.path if p not in ("", ".", root)]
    import main as firmware  # fw/<slot>/main.mpy (this file runs as __main__)
    firmware.main()


if __name__ == "__main__":
    boot()
