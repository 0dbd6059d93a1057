"""The worker process: the Faust app that runs the stages, its settings and metrics, and
the runner behind ``tocsin run``."""
