"""The gRPC platform every service stands on: server bootstrap, interceptors (auth, quotas, deadlines,
logs, metrics, errors), TLS, channels, executors and the typed settings."""
