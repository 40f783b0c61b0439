"""``python -m rlm_toolkit``: the ``rlm-toolkit`` command."""

from .cli import main

raise SystemExit(main())
