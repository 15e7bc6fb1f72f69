"""Real parts for tests, e2e and the demo: envtest control plane, node simulator, local model sources."""
