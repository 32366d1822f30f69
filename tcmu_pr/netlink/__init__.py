"""The TCM-USER generic-netlink side of the daemon."""
