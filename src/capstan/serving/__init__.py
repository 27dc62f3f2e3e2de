"""Model serving: protocol codecs, batching, traffic and drift (pure cores), and the serving app."""
