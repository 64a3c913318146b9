"""lagoon.optim"""
