"""saev-ops: the sparse-autoencoder research loop on vision models, with a SQL registry.

The public surface is small; import everything else by module path:

- :mod:`saev_ops.registry` -- the SQL registry (``Registry``, frozen records).
- :mod:`saev_ops.errors` -- the exception hierarchy (every error derives from ``SaevOpsError``).
"""

__version__ = "0.1.0"
