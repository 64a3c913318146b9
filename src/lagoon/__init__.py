"""lagoon: an open training stack for agentic coding models (Laguna architecture, Muon, async agent RL)."""

__version__ = "0.1.0"
