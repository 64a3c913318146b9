"""lagoon.agent"""
