"""The mechanisms every room uses: errors, atomic files, hashes, seeding, input checks, option dataclasses,
processes, names.

Imports nothing from xbt: every other package may import it.
"""
