"""meshserve services: the router (and, later, the audit service)."""
