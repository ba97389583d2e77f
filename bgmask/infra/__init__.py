"""The plumbing every layer may use: checkpoints, logs, progress bars, processes and signals (distributed,
preemption), registries and the command lines' shared parts."""
