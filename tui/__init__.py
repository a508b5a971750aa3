"""cbam-tui's terminal side: the CLI, the headless reporter and the dashboard."""
