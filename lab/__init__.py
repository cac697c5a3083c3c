"""The labgrid lab (docs/lab.md). Two interpreters use this folder:

- the lab's venv (.venv-lab, with labgrid): labctl.py, supervisor.py, exporter.py, client.py,
  lgcommon.py, run as scripts;
- the HIL suite's venv (.venv, with penctl): place.py and hil_lab.py, which reach labgrid only
  through client.py, in a process of its own.
"""
