"""`penctl --port rfc2217://host:port` works for every command, flash included (issue 12 item 3,
docs/design.md §9), through a real RFC 2217 server (pyserial's PortManager, what ser2net speaks) with
5 ms added each way, more than a lab network adds."""

import csv

from penctl_links import Rfc2217Server
from test_cli import TM_HEADER, ok, refused, rig, run

from pensim.supervisor import VirtualPen

PROFILES = ('[[profile]]\nname = "lab"\ndepth_mm = 0.5\nstroke_hz = 100\nmax_session_s = 600\n'
            '[[profile]]\nname = "spare"\ndepth_mm = 0.25\nstroke_hz = 60\nmax_session_s = 60\n')


def test_every_command_over_rfc2217(tmp_path):
    profiles = tmp_path / "lab.toml"
    profiles.write_text(PROFILES)
    with VirtualPen(clock="fast", blank=True) as pen, Rfc2217Server(pen.port, delay_s=0.005) as server:
        url = server.url
        report = ok(run("flash", port=url, timeout=180))["report"]
        assert report["changed"] is True and report["protocol"] == 2 and report["guard"] == "REPL"
        again = ok(run("flash", port=url, timeout=180))["report"]
        assert again["changed"] is False and again["guard"] in ("LOCKED", "READY", "BOOT")
        assert ok(run("info", port=url))["board"] == "sim"
        assert ok(run("profile", "push", profiles, port=url))["pushed"] == ["lab", "spare"]
        assert ok(run("profile", "use", "lab", port=url))["active"] == "lab"
        assert ok(run("profile", "rm", "spare", port=url))["removed"] == "spare"
        assert [p["name"] for p in ok(run("profile", "list", port=url))["profiles"]] == ["lab"]
        assert ok(run("sterilise", port=url))["state"] == "READY"
        rig(pen, {"op": "cartridge", "id": "1AB0000000000001"})
        csv_path = tmp_path / "lab.csv"
        session = ok(run("session", "run", "--seconds", "2", "--csv", csv_path, port=url, timeout=120))
        # (on the fast clock pen time outruns a slow, loaded link: samples may be missed, never stale)
        assert session["complete"] is True and session["duration_s"] >= 2.0
        with open(csv_path, newline="") as handle:
            assert next(csv.reader(handle)) == TM_HEADER
        telemetry = ok(run("telemetry", "--seconds", "1", port=url))
        times = [row["t_s"] for row in telemetry["rows"]]
        assert times == sorted(times) and times[-1] - times[0] >= 0.98
        ok(run("sterilise", port=url))
        rig(pen, {"op": "cartridge", "id": "1AB0000000000002"})
        ok(run("session", "start", port=url))
        stopped = ok(run("session", "stop", port=url))
        assert stopped["state"] == "LOCKED" and stopped["depth_mm"] <= 0.05
        rig(pen, {"op": "inject", "fault": "overtemp"})
        refused(run("sterilise", port=url), "FAULT")
        rig(pen, {"op": "clear_injections"})
        assert ok(run("fault", "clear", "--reason", "lab test", port=url))["cleared"] == "OVERTEMP"
        kinds = [entry["kind"] for entry in ok(run("log", port=url))["entries"]]
        assert kinds.count("session") == 2 and kinds[-2:] == ["fault", "fault_clear"]
        assert server.connections >= 15
