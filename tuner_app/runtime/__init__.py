"""What a process runs on: backend and hardware, interrupts, progress, files (atomic writes, the lock)."""
