# Platform-agnostic pen core. Never imports `machine`, `rp2` or a board module.
