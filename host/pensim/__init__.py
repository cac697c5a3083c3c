"""pensim: the virtual pen, a program of its own (pybricks' virtual hub).

It makes the MicroPython unix port, running the unchanged firmware with the
simulated board (firmware/boards/sim.py), look like a pen on a serial port (a pty).
`penctl sim` starts it; the HIL suite and the tests drive it through `VirtualPen`.
The design is in docs/design.md §5; the modules:

    supervisor     VirtualPen (lifecycle, Python API of the rig) and run_sim (`penctl sim`)
    pen_machine    the pen's power and boot states, host bytes and rig ops routed to them
    interpreter    one MicroPython process (firmware or REPL shim): spawn, pipes, SIGINT, kill
    ptyport        the pen's USB-CDC port: the pty master, buffers, flow control
    rig_server     the rig socket (JSON lines of penctl.firmware.boards.rigproto)
    rig_channel    the rig pipes to a running sim board
    world          the cartridge (with its used mark) and the dock lid, replayed after each start
    flash_dir      the pen's flash folder, factory image, serial number
    owned_paths    --link and --control: never replace or delete what the pen did not create
    loop           the event loop all of the above run in
    repl_shim      the REPL a board prints (a MicroPython script), shim_protocol its exit codes
"""

from pensim.supervisor import SimConfigError, SimError, VirtualPen, run_sim

__all__ = ["VirtualPen", "SimError", "SimConfigError", "run_sim"]
