"""The audit service: stores call events from JetStream in a hash-chained trail and answers AuditService."""
