"""Browser-test tooling: headless Chromium driven by Playwright, and local servers started as subprocesses."""
