"""Pure logic of Tocsin: no Kafka, no Faust, no DuckDB, no clock, no randomness.

Everything here takes event time as an argument, so a replay is a loop over recorded
inputs and gives the same result byte for byte.
"""
