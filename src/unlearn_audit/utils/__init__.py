"""Small shared helpers: atomic file output, hashing, threads, logging."""
