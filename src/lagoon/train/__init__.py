"""lagoon.train"""
