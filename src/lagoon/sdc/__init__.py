"""lagoon.sdc"""
