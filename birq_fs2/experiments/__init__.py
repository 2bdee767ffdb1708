"""Experiments over recipe runs: launching and resuming them, reading their folders
(`runs`), comparing them (`stats`) and drawing them (`plots`). Shared by the evidence and
label-sweep runners in benchmarks/, the demo report and the tests."""
