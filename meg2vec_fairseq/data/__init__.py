"""fairseq datasets of the plugin (imports fairseq and torch)."""
