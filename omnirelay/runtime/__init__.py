"""Process runtime: building core tables from config, the supervisor and workers."""
