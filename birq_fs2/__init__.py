"""birq-fs2: BiRQ self-supervised speech pretraining as a fairseq2 extension."""

__version__ = "0.1.0"
