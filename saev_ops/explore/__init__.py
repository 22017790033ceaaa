"""Step 4: exploration over the registry and inference outputs (reads only; never writes the registry)."""
