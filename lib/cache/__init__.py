"""The cache-aside layer over Redis: entries and their scripts, invalidation, refills, the outbox, locks."""
