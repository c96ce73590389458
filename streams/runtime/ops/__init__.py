"""Running the guard: start-up checks, secrets, logs, metrics, readiness, fault hook."""
