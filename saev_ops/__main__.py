"""``python -m saev_ops`` is the ``saev-ops`` command."""

from saev_ops.cli import main

main()
