"""Who is calling (API keys) and what they may do (allow rules), for routers and commands."""
