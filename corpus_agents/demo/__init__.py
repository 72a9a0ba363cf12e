"""The embedded demo: a small multi-domain corpus from text on the machine, scored and trained on."""
