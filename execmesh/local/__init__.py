"""The local mesh: every process of the pipeline on one machine."""
