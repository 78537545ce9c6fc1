"""Test tooling (official-format checkpoint writers, synthetic reconstructions): not part of the package."""
