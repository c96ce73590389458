"""Running the guard: settings, start-up checks, secrets, logs, metrics, readiness, fault hook."""
