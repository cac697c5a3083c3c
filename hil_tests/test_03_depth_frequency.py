"""Depth accuracy (S1, S2) and stroke-frequency control (S3), with telemetry plots."""
import pytest

from hil_tests.conftest import need_rig
from hil_tests.helpers import fresh_cartridge, make_ready, use_profile
from penctl import telemetry as tm

DEPTH_TOL_MM = 0.05          # S2
HZ_TOL = 0.02                # S3 steady-state error
SETTLE_MS = 300              # S3
OVERSHOOT = 0.05             # S3: no overshoot above 105 %
RUN_S = 2.0                  # pen seconds of each session


def _run(pen, rig, depth_mm, stroke_hz, midway=None):
    use_profile(pen, depth_mm, stroke_hz)
    make_ready(pen, rig)
    rig.cartridge(fresh_cartridge())
    seen = {}

    def on_sample(row):
        if midway and "rig" not in seen and row["duty"] > 0:
            seen.setdefault("t0", row["t_s"])
            if row["t_s"] - seen["t0"] >= 0.5:
                seen["rig"] = midway()

    # This test stops the session itself, after its rig measurement. `session run` has the pen
    # end it at RUN_S (run_ms, S8), and a host that lags the pen's stream (a fast-clock pen
    # behind a lab's RFC 2217 link, several pens on two cores) would measure after the end.
    pen.session_start()
    try:
        recorded = pen.telemetry(RUN_S, on_sample=on_sample)
    finally:
        stopped = pen.session_stop()
    end = stopped.get("session_end") or {}
    return {"rows": recorded["rows"], "end_reason": end.get("reason")}, seen.get("rig")


def _plot(recorder, rows, stem, title):
    path = recorder.plot_path(stem)
    if path:
        tm.plot(rows, path, title=title)
        recorder.add_plot(title, path)


@pytest.mark.parametrize("depth_mm", [0.25, 0.5, 1.0, 1.5, 2.0, 2.5])
def test_s2_depth_accuracy(pen, rig, recorder, depth_mm):
    need_rig(rig.measure)
    result, plant = _run(pen, rig, depth_mm, 100, midway=rig.measure)
    rows = result["rows"]
    driven = [r for r in rows if r["duty"] > 0]
    assert driven, "the motor never ran"
    worst = max(abs(r["depth_mm"] - depth_mm) for r in driven)
    _plot(recorder, rows, "depth-%.2fmm" % depth_mm, "depth %.2f mm" % depth_mm)
    recorder.check("depth %.2f mm: worst telemetry error while running" % depth_mm, round(worst, 4), "mm",
                   0, DEPTH_TOL_MM)
    assert plant is not None, "no rig measurement during the session"
    recorder.check("depth %.2f mm: rig-measured error" % depth_mm, abs(plant["depth_um"] / 1000 - depth_mm), "mm",
                   0, DEPTH_TOL_MM)
    assert result["end_reason"] == "STOPPED"         # by this test, not by a fault


def frequency_metrics(rows, target_hz):
    """Settle time (ms from motor start), overshoot (fraction) and steady-state error
    (fraction, mean of the last 0.5 s) from telemetry rows of one session."""
    driven = [r for r in rows if r["duty"] > 0]
    t0 = driven[0]["t_s"]
    settle_t = None
    for index, row in enumerate(driven):
        if all(abs(r["hz"] - target_hz) <= HZ_TOL * target_hz for r in driven[index:]):
            settle_t = row["t_s"]
            break
    overshoot = max(r["hz"] for r in driven) / target_hz - 1
    tail = [r["hz"] for r in driven if r["t_s"] >= driven[-1]["t_s"] - 0.5]
    steady = abs(sum(tail) / len(tail) - target_hz) / target_hz
    settle_ms = None if settle_t is None else (settle_t - t0) * 1000
    return settle_ms, overshoot, steady


@pytest.mark.parametrize("stroke_hz", [50, 75, 100, 125, 150])
def test_s3_stroke_frequency(pen, rig, recorder, stroke_hz):
    need_rig(rig.measure)
    result, plant = _run(pen, rig, 1.0, stroke_hz, midway=rig.measure)
    rows = result["rows"]
    assert result["end_reason"] == "STOPPED"
    assert plant is not None, "no rig measurement during the session"
    _plot(recorder, rows, "frequency-%dHz" % stroke_hz, "stroke frequency %d Hz" % stroke_hz)
    settle_ms, overshoot, steady = frequency_metrics(rows, stroke_hz)
    recorder.check("%d Hz: settle time" % stroke_hz, settle_ms, "ms", 0, SETTLE_MS)
    recorder.check("%d Hz: overshoot" % stroke_hz, round(overshoot * 100, 2), "%", None, OVERSHOOT * 100)
    recorder.check("%d Hz: steady-state error" % stroke_hz, round(steady * 100, 3), "%", 0, HZ_TOL * 100)
    recorder.check("%d Hz: rig-measured frequency" % stroke_hz, plant["hz"], "Hz",
                   stroke_hz * (1 - HZ_TOL), stroke_hz * (1 + HZ_TOL))
