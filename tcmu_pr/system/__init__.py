"""Files a gateway host installs (tcmu_pr/system_install.py): package data."""
