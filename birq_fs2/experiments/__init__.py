"""Experiments over recipe runs: launching and resuming them, reading their folders,
comparing them (statistics) and drawing them. Shared by the evidence and label-sweep
runners in benchmarks/, the demo report and the tests."""
