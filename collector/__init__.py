"""The slaprobe collector: receives agent streams, stores measurements, scores SLAs."""
