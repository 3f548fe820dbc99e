"""The scaling study: ``python -m hpcnn.scaling run | point | model | report``.

- :mod:`hpcnn.scaling.point`: one measured point (an MPI program) appended to a CSV;
- :mod:`hpcnn.scaling.run`: the driver over a matrix of points (shared memory or emulated nodes);
- :mod:`hpcnn.scaling.alphabeta`: alpha-beta costs of the collectives and their fit;
- :mod:`hpcnn.scaling.model`: predicted step time and efficiency of each parallel mode;
- :mod:`hpcnn.scaling.report`: plots and ``report.md``;
- :mod:`hpcnn.scaling.csvio`: the study's CSV (one row per point).
"""
