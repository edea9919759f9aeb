"""Text extraction: ``partition_file`` runs in a sandboxed child process driven by ``sandbox``."""
