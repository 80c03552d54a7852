"""The shared task store (see ``base``) and how to open the configured one."""
