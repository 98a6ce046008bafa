# The conftest one-liner: activates pyspark-safestop for the whole suite, before any session is
# created. (Installing the package is enough already: its .pth and its pytest plugin activate it.
# This line is what keeps it active where they are skipped.) PYSPARK_SAFESTOP=0 turns it off.
import pyspark_safestop  # noqa: F401
