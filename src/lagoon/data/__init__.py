"""lagoon.data"""
