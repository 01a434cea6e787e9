"""slmbook: the tested package behind the notebooks of *Building a Small Language Model from Scratch*.

Import the concept modules directly (`from slmbook.data import load_stories`); chapter 0 prints a map
of which module carries which chapter's idea, and the README's package tree lists every module, one line
each, in the order of the chapters (both come from slmbook/chapters.py).
"""

__version__ = "0.1.0"
