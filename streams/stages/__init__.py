"""The pipeline's stages, each a raw aiokafka loop around the pure code in ``processors``:
span intake, detection, triage and the DuckDB projection."""
