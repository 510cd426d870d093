"""``python -m glmha.cli``: the same as the ``glmha`` command."""
from . import main

raise SystemExit(main())
