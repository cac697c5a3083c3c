# Marks firmware/ as the host package `penctl.firmware` (pyproject.toml), so the host imports the
# shared modules (penctl.firmware.pen.wire, .limits, .profiles) and a wheel ships the sources that
# `penctl flash` deploys. Not part of the pen's image: flashing skips this file.
