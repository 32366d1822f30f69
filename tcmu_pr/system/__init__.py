"""What a gateway host installs: ``tcmu-pr system install`` (install.py) and its package data."""
