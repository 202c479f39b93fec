"""The slaprobe agent: runs scheduled probes and streams every result to the collector."""
