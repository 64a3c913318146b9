"""lagoon.automix"""
