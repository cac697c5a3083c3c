"""pensim: the virtual pen, a program of its own (pybricks' virtual hub).

It makes the MicroPython unix port, running the unchanged firmware with the
simulated board (firmware/boards/sim.py), look like a pen on a serial port (a pty).
`penctl sim` starts it; the HIL suite and the tests drive it through `VirtualPen`.
The design is in docs/design.md §5.
"""

from pensim.supervisor import VirtualPen, SimError, run_sim

__all__ = ["VirtualPen", "SimError", "run_sim"]
