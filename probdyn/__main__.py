"""``python -m probdyn`` = the ``probdyn`` command."""

from probdyn.cli import main

raise SystemExit(main())
