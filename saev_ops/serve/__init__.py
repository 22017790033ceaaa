"""Step 4 in a browser: ``saev-ops serve``, a local, read-only web app over the registry and its inference outputs
(:func:`saev_ops.serve.app.create_app`). Needs the ``serve`` extra (Starlette, uvicorn, Jinja2, plotly's bundled
JavaScript)."""
