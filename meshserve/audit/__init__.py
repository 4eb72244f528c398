"""Audit plumbing shared by the router (which emits call events) and the audit service."""
