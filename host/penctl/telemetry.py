"""Telemetry rows in host units, CSV export and PNG plots (docs/design.md §4).

The pen sends `{"ev": "tm", "sub": id, "n": index, "s": [ints]}` in the integer units
of the wire field names it lists in its `telemetry` reply (the layout is defined once, in
the firmware's pen.proto.TM_LAYOUT). A row here has the docs/design.md §4 columns:

    t_s           pen time since power-on, s
    state         BOOT | LOCKED | STERILISING | READY | RUNNING | FAULT
    depth_set_mm  needle depth set point, mm
    depth_mm      measured needle depth, mm
    hz_set        stroke frequency set point, Hz
    hz            measured stroke frequency, Hz
    duty          motor PWM duty, fraction 0..1
    current_ma    motor current, mA
    temp_c        handpiece temperature, degC
    battery_v     battery voltage, V
    strokes       strokes in this session
    faults        faults since power-on
    overruns      control ticks missed since power-on
    tick_max_us   worst control tick cost, us
"""

import csv

from penctl.firmware.pen.proto import TM_LAYOUT
from penctl.firmware.pen.wire import STATE_NAMES

# One definition of the layout (docs/design.md §3.4): the firmware's pen.proto.
COLUMNS = tuple(host for _wire, host, _div in TM_LAYOUT)
WIRE_FIELDS = tuple(wire for wire, _host, _div in TM_LAYOUT)
_BY_WIRE = {wire: (host, div) for wire, host, div in TM_LAYOUT}


def state_name(index):
    if isinstance(index, int) and 0 <= index < len(STATE_NAMES):
        return STATE_NAMES[index]
    return "STATE_%s" % index


def row_from_sample(sample, fields=WIRE_FIELDS):
    """A wire sample (list of ints, in the order of `fields`: the wire names the pen sent in its
    `telemetry` reply) -> a row dict in host units with every COLUMNS key; ValueError if malformed
    or if a column is missing."""
    if not isinstance(sample, list) or len(sample) != len(fields) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in sample):
        raise ValueError("telemetry sample must be %d integers" % len(fields))
    row = {}
    for name, value in zip(fields, sample, strict=True):
        known = _BY_WIRE.get(name)
        if known is None:
            continue                     # a field this penctl does not know: ignored
        host, div = known
        row[host] = state_name(value) if div == 0 else (value if div == 1 else value / div)
    missing = [col for col in COLUMNS if col not in row]
    if missing:
        raise ValueError("telemetry sample lacks %s" % ", ".join(missing))
    return row


def write_csv(rows, path):
    """Write rows with the docs/design.md §4 header. Returns the number of rows written."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row[col] for col in COLUMNS])
    return len(rows)


def read_csv(path):
    """Rows back from a CSV written by write_csv (numbers as float/int)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = []
        for raw in reader:
            row = {}
            for col in COLUMNS:
                text = raw[col]
                if col == "state":
                    row[col] = text
                elif col in ("current_ma", "strokes", "faults", "overruns", "tick_max_us"):
                    row[col] = int(text)
                else:
                    row[col] = float(text)
            rows.append(row)
        return rows


def state_changes(rows):
    """[(t_s, state)] at the first row and wherever the state differs from the previous row."""
    out = []
    previous = None
    for row in rows:
        if row["state"] != previous:
            out.append((row["t_s"], row["state"]))
            previous = row["state"]
    return out


def plot(rows, path, title=None):
    """PNG with frequency, depth, current and temperature over time, state changes marked."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 9), dpi=100)
    axes = fig.subplots(4, 1, sharex=True)
    t0 = rows[0]["t_s"] if rows else 0.0
    t = [row["t_s"] - t0 for row in rows]

    def series(name):
        return [row[name] for row in rows]

    ax_hz, ax_depth, ax_current, ax_temp = axes
    ax_hz.plot(t, series("hz_set"), label="set", color="tab:gray", linestyle="--")
    ax_hz.plot(t, series("hz"), label="measured", color="tab:blue")
    ax_hz.set_ylabel("stroke frequency (Hz)")
    ax_depth.plot(t, series("depth_set_mm"), label="set", color="tab:gray", linestyle="--")
    ax_depth.plot(t, series("depth_mm"), label="measured", color="tab:green")
    ax_depth.set_ylabel("needle depth (mm)")
    ax_current.plot(t, series("current_ma"), color="tab:orange")
    ax_current.set_ylabel("motor current (mA)")
    ax_temp.plot(t, series("temp_c"), color="tab:red")
    ax_temp.set_ylabel("handpiece temp (°C)")
    ax_temp.set_xlabel("time (s)%s" % (" from pen time %.3f s" % t0 if rows else ""))
    ax_hz.legend(loc="best", fontsize="small")
    ax_depth.legend(loc="best", fontsize="small")
    for when, state in state_changes(rows):
        x = when - t0
        for ax in axes:
            ax.axvline(x, color="tab:purple", alpha=0.5, linewidth=1)
        ax_hz.annotate(state, xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                       textcoords="offset points", va="top", fontsize="small", color="tab:purple",
                       rotation=90)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or "pen telemetry (%d samples)" % len(rows))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
