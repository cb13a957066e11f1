"""What the worker and the CLI run: archive, restore, dispose, reconcile, index catch-up."""
