"""lagoon.infer"""
