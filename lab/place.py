"""A lab place as the HIL harness holds it (runs in the suite's venv, .venv: no labgrid import).

The harness talks to labgrid through lab/client.py, run by the lab's own interpreter (.venv-lab):
labgrid's pyserial-labgrid and penctl's pyserial cannot share a venv (docs/lab.md). `LabPlace`
claims a place by tags (reclaiming stale locks, never an offline pen), says where its pen and rig
are served, and releases it.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "client.py"
CALL_TIMEOUT_S = 30.0          # resolve / release; a claim gets its own timeout on top of this
SIGTERM_GRACE_S = 10.0         # a client told to stop gives back what it reserved within this

# The pen's port is a USB-CDC port: modem lines mean nothing to it, and ser2net does not
# acknowledge SET_CONTROL (DTR/RTS) on a port that has none, such as a virtual pen's pty. pyserial
# would wait 3 s for that acknowledgement at every open; the request is still sent.
RFC2217_OPTIONS = "?ign_set_control"


class LabError(Exception):
    """The lab could not give, describe or take back a place; the message says which and why."""


def url_of(resource):
    """The pyserial URL of a NetworkSerialPort as lab/client.py describes it."""
    if resource is None:
        return None
    if resource["protocol"] == "rfc2217":
        return "rfc2217://%s:%d%s" % (resource["host"], resource["port"], RFC2217_OPTIONS)
    if resource["protocol"] == "raw":
        return "socket://%s:%d" % (resource["host"], resource["port"])
    raise LabError("unknown NetworkSerialPort protocol %r" % resource["protocol"])


class LabPlace:
    def __init__(self, coordinator, lab_python, tags, run, worker, timeout_s):
        self.coordinator = coordinator
        self.lab_python = lab_python
        self.tags = tags
        self.run = run
        self.worker = worker
        self.timeout_s = timeout_s
        self.name = None
        self.token = None
        self.described = None
        self.reclaimed = []

    def _client(self, args, timeout_s):
        cmd = [self.lab_python, str(CLIENT), "-x", self.coordinator] + args
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=SIGTERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise LabError("lab client did not answer within %.0f s (%s): %s" % (
                timeout_s, " ".join(args[:1]), err.strip()[-500:])) from None
        except BaseException:
            proc.send_signal(signal.SIGTERM)        # interrupted: it gives back what it reserved
            proc.communicate(timeout=SIGTERM_GRACE_S)
            raise
        if err.strip():
            print(err.rstrip(), file=sys.stderr)     # progress: what it waits for, what it reclaimed
        try:
            reply = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        except ValueError:
            reply = {}
        if proc.returncode != 0 or "error" in reply:
            raise LabError(reply.get("error") or "lab client failed (exit %s): %s" % (
                proc.returncode, err.strip()[-800:]))
        return reply

    def claim(self):
        tags = ",".join("%s=%s" % kv for kv in sorted(self.tags.items()))
        reply = self._client(["claim", "--tags", tags, "--holder", str(os.getpid()), "--run", self.run,
                              "--worker", self.worker, "--timeout", str(self.timeout_s)],
                             self.timeout_s + CALL_TIMEOUT_S)
        self.name = reply["place"]
        self.token = reply["token"]
        self.reclaimed = reply.get("reclaimed", [])
        self.described = reply
        return reply

    def resolve(self):
        """Where the place's pen and rig are served now (they move when the pen re-enumerates)."""
        self.described = self._client(["resolve", "--place", self.name], CALL_TIMEOUT_S)
        return self.described

    def release(self):
        if self.name is None:
            return None
        reply = self._client(["release", "--place", self.name, "--token", self.token or "", "--run", self.run],
                             CALL_TIMEOUT_S)
        if not reply.get("released"):
            raise LabError("place %s was not released: %s" % (self.name, reply.get("reason")))
        return reply

    @property
    def pen_url(self):
        pen = self.described.get("pen")
        return url_of(pen) if pen and pen.get("port") else None

    @property
    def rig_url(self):
        rig = self.described.get("rig")
        return url_of(rig) if rig and rig.get("port") else None

    @property
    def published_serial(self):
        return (self.described.get("pen") or {}).get("serial")
