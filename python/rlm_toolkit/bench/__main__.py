"""``python -m rlm_toolkit.bench``: the same as ``rlm-toolkit bench``."""

from .command import main

raise SystemExit(main())
