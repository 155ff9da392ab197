"""Training scripts and the engine they share (``training.engine``); never imported by the ``mpafer`` library."""
