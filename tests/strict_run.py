"""Run a script (``strict_run.py PATH ARGS...``) or a module (``strict_run.py -m NAME
ARGS...``) as ``__main__`` with the test suite's warning rule: a DeprecationWarning
attributed to a probdyn module is an error. The subprocesses of the tutorial and CLI tests
start through this file, since pytest's ``filterwarnings`` only reaches its own process
(and ``PYTHONWARNINGS`` matches module names exactly, not ``probdyn.*``)."""

import runpy
import sys
import warnings

if __name__ == "__main__":
    warnings.filterwarnings("error", category=DeprecationWarning, module="probdyn")
    if sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
