"""tcmu-pr: a TCMU handler whose SCSI-3 persistent reservations are shared by every gateway."""

__version__ = "0.1.0"
