"""Users, tokens, roles and the RBAC policy."""
