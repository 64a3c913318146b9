"""lagoon.rl"""
