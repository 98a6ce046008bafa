"""Tools to prove that a Spark Connect test suite survives the RPCs that hang.

- :mod:`~pyspark_safestop.testing.faults`: :class:`FaultProxy`, a gRPC proxy in front of a
  real Spark Connect server that hangs, delays or fails chosen RPCs (every call, every k-th
  one, or the ones carrying a marker such as a SQL text) and can drop every connection.
  Needs ``grpcio`` (``pip install pyspark-safestop[testing]``).
- :mod:`~pyspark_safestop.testing.relay`: :class:`TcpRelay`, which can blackhole a
  connection (no bytes either way, nothing closed).
- :mod:`~pyspark_safestop.testing.traffic`: :func:`busy_grpc`, gRPC kept busy in this
  process, to show what subprocesses started meanwhile go through.
- :mod:`~pyspark_safestop.testing.catalogue`: the scenarios in which upstream's client hangs,
  with their faults and bounds, as a catalogue you can run (:func:`run_case`);
  :mod:`~pyspark_safestop.testing.scenarios`: each scenario's function beside its cases
  (:class:`~pyspark_safestop.testing.cases.Case`); :mod:`~pyspark_safestop.testing.checks`:
  the one table of bounds and the checks a run is held against.
- :mod:`~pyspark_safestop.testing.cluster`: a standalone Spark cluster on this machine, for
  the servers' ``spark://`` master.
- :mod:`~pyspark_safestop.testing.tls`: a test certificate, for the fault proxy's TLS side.
- ``python -m pyspark_safestop.testing.scenarios``: the program that runs one scenario in a
  child interpreter; :mod:`~pyspark_safestop.testing.child`: its protocol and steps, for workers
  of your own; :mod:`~pyspark_safestop.testing.runner`: the parent side (:func:`run_events`,
  :func:`child_env`, :func:`kill_group`); :mod:`~pyspark_safestop.testing.preloaded`: runs
  forked from an interpreter that imported the client's heavy dependencies once.

Importing this package imports neither grpc nor pyspark.
"""
