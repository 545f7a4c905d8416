"""Operations: the health check, the metrics report, the cron runner."""
